#!/usr/bin/perl
# Sends one fixed set of metrics with Debian's Net::Statsd (libnet-statsd-perl) to
# 127.0.0.1:<port>, then exits.  rand() always passes, so every sampled call is sent.
use strict;
use warnings;
BEGIN { *CORE::GLOBAL::rand = sub { 0 } }
use Net::Statsd;

$Net::Statsd::HOST = '127.0.0.1';
$Net::Statsd::PORT = $ARGV[0] or die "usage: $0 PORT\n";

Net::Statsd::increment('pl.requests') for 1 .. 5;
Net::Statsd::increment('pl.requests', 0.1);
Net::Statsd::decrement('pl.requests');
Net::Statsd::update_stats(['pl.requests', 'pl.other'], 7);
Net::Statsd::gauge('pl.queue' => 40);
Net::Statsd::gauge('pl.queue' => 12, 'pl.free' => 88);
Net::Statsd::timing('pl.latency', $_) for 10, 20, 30;
Net::Statsd::timing('pl.latency', 100, 0.5);
