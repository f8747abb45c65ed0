// A graphite-era configuration that also tries AppOptics, with options statsd-ao ignores.
{
  graphitePort: 2003,
  graphiteHost: "graphite.example.com",
  graphite: { legacyNamespace: false, globalPrefix: "stats" },
  servers: [
    { server: "./servers/udp", address: "0.0.0.0", port: 8125 },
    { server: "./servers/tcp", address: "0.0.0.0", port: 8125 },
  ],
  backends: ["./backends/graphite", "./backends/console", "statsd-appoptics-backend", "./backends/repeater"],
  repeater: [ { host: '10.10.10.10', port: 8125 } ],
  repeaterProtocol: "udp4",
  console: { prettyprint: false },
  dumpMessages: true,
  debug: false,
  title: "statsd",
  histogram: [ { metric: 'render', bins: [ 0.01, 0.1, 1, 10, 'inf'] } ],
  keyFlush: { interval: 60000, percent: 10 },
  percentThreshold: [90, -10],
  gaugesMaxTTL: 1,
  appoptics: {
    token: "abc",
    countersAsGauges: false,
    retryDelaySecs: 10,
    proxy: { uri: "http://127.0.0.1:8080" },
  },
  librato: { email: "me@example.com", token: "def" },
}
