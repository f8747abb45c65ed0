"""Tests of the modules of statsd_ao.io (the package layout, mirrored)."""
