// Sends one fixed set of metrics with hot-shots (DogStatsD) to 127.0.0.1:<port>, then exits.
// Sampling is made deterministic (every sampled call is sent) so the test knows the totals.
"use strict";
Math.random = () => 0;
const StatsD = require("hot-shots");

const port = Number(process.argv[2]);
const client = new StatsD({
  host: "127.0.0.1",
  port,
  globalTags: { app: "node" },
  maxBufferSize: 1000, // buffered: several lines per datagram, as production clients run
  bufferFlushInterval: 10,
  errorHandler: (error) => { console.error(error); process.exitCode = 1; },
});

for (let i = 0; i < 10; i++) client.increment("hs.requests", 1, 0.5, { route: "home" });
client.decrement("hs.requests", 3, { route: "home" });
client.gauge("hs.queue", 40);
client.gaugeDelta("hs.queue", 5);
client.gaugeDelta("hs.queue", -12);
for (const ms of [10, 20, 30, 40]) client.timing("hs.latency", ms, { route: "home" });
client.timing("hs.latency", 100, 0.25, { route: "home" });
for (const v of [1, 2, 3]) client.histogram("hs.size", v);
for (const v of [5, 7]) client.distribution("hs.dist", v);
for (const user of ["ann", "bob", "ann", "cid"]) client.set("hs.users", user);
client.event("deploy", "v42 shipped", { alert_type: "success" }, ["env:test"]);
client.check("hs.db.up", client.CHECKS.WARNING, { hostname: "db1" }, ["env:test"]);
client.close((error) => { if (error) { console.error(error); process.exitCode = 1; } });
