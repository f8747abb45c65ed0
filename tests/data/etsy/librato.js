/* statsd-librato-backend 2.x, tagged-metrics account. */
{
  "backends": ["statsd-librato-backend"],
  "port": 8125,
  "flushInterval": 10000,
  "librato": {
    "email": "myemail@example.com",
    "token": "ca98e2bc23b1bfd0cbe9041e824f610491129bb952d52ca4ac22cf3eab5a1c32",
    "source": "statsd-1",
    "sourceRegex": "/^([^.]+)\\.source\\./",
    "tags": { "region": "us-east-1", "host": "ignored-without-host-option" },
    "includeMetrics": ["^api\\."],
    "skipInternalMetrics": false,
    "writeToLegacy": false,
  },
}
