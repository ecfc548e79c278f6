"""`make bench-serving`: see __main__.py and loadtests/README.md."""
