/* An etsy statsd + statsd-appoptics-backend configuration for the side-by-side test:
   etsy's defaults (idle stats kept, key names sanitized) and a plain backend section. */
{
  port: 8125,
  flushInterval: 10000,
  percentThreshold: [90],
  backends: ["statsd-appoptics-backend"],
  appoptics: {
    token: "from-the-file",
    tags: { env: "prod", },
    globalPrefix: "legacy",
    sourceRegex: /^(web-\d+)\./,
    excludeMetrics: [/^debug\./],
  },
  dumpMessages: false,
  graphitePort: 2003,  // a graphite setting: not supported, named in one warning
}
