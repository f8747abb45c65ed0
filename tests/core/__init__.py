"""Tests of the modules of statsd_ao.core (the package layout, mirrored)."""
