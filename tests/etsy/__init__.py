"""Tests of the modules of statsd_ao.etsy (the package layout, mirrored)."""
