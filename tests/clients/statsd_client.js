// Sends one fixed set of metrics with statsd-client to 127.0.0.1:<port>, then exits.
// statsd-client has no sample rates, events or service checks.
"use strict";
const SDC = require("statsd-client");

const port = Number(process.argv[2]);
const transport = process.argv[3] || "udp";
// socketTimeout: how often the client checks its idle socket; it closes after 10 idle checks.
const client = new SDC({
    host: "127.0.0.1",
    port,
    tcp: transport === "tcp",
    socketTimeout: 50,
    tags: { app: "sdc" },
});

client.increment("sdc.requests");
client.increment("sdc.requests", 4, { route: "home" });
client.decrement("sdc.requests", 2, { route: "home" });
client.gauge("sdc.queue", 40);
client.gaugeDelta("sdc.queue", 5);
client.gaugeDelta("sdc.queue", -12);
for (const ms of [10, 20, 30]) client.timing("sdc.latency", ms);
client.histogram("sdc.size", 64);
client.distribution("sdc.dist", 9);
for (const user of ["ann", "bob", "ann"]) client.set("sdc.users", user);
client.close();
