"""asv benchmarks of rnla (see ``asv_benchmarks/asv.conf.json`` and ``rnla.bench``)."""
