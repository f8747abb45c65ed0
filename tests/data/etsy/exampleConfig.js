/*
 * An etsy statsd configuration in the style of the one shipped with statsd:
 * a long comment describing the options, a parenthesised object literal,
 * leading commas, and options left commented out.
 *
 * Options (see statsd's documentation for the full list):
 *   port:             UDP port to listen on [8125]
 *   address:          address to listen on [0.0.0.0]
 *   flushInterval:    how often to flush, in milliseconds [10000]
 *   percentThreshold: timer percentile(s) [90]
 *   backends:         modules to load, e.g. [ "./backends/graphite" ]
 */
({
  port: 8125
, address: "0.0.0.0"
, flushInterval: 10000          // ten seconds, in ms
, percentThreshold: [ 90, 95, 99.9 ]
//, debug: true
//, dumpMessages: true
, deleteIdleStats: false
, keyNameSanitize: true
, prefixStats: "statsd"
, backends: [ "statsd-appoptics-backend" ]
, appoptics: {
    token: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
  }
})
