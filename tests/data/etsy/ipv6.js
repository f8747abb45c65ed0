{
  port: 9125,
  address: "::1",
  address_ipv6: true,
  mgmt_address: "::1",
  mgmt_port: 9126,
  healthStatus: 'down',
  flushInterval: 1500,
  backends: ["statsd-appoptics-backend"],
  appoptics: { token: "abc", host: false },
}
