"""Load tests (Locust files and load shapes) and the serving benchmark (`python -m loadtests.bench_serving`).

See loadtests/README.md.
"""
