// statsd-appoptics-backend with every option its README and code document.
{
  backends: ['statsd-appoptics-backend'],
  port: 8125,
  flushInterval: 60000,
  percentThreshold: 95,
  deleteIdleStats: true,
  deleteGauges: false,          // keep repeating gauges even though idle stats are deleted
  keyNameSanitize: false,       // required for name#tag=value per-stat tags
  appoptics: {
    token: 'ca98e2bc23b1bfd0cbe9041e824f610491129bb952d52ca4ac22cf3eab5a1c32',
    api: 'https://api.appoptics.com/',
    tags: { os: 'ubuntu', role: "web", tier: 2 },
    host: 'web-1.example.com',
    globalPrefix: 'prod',
    batchSize: 300,
    postTimeoutSecs: 8,
    snapTime: 60,
    alwaysSuffixPercentile: true,
    includeMetrics: [/^my\.included\.metrics/, /^my.specifically.included.metric$/],
    excludeMetrics: ['/^my\\.excluded\\./', 'debug$', /NOISY/i],
    sourceRegex: /^(web-\d+)\./,
  },
}
