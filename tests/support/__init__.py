"""What the tests, the benchmarks (bench/) and scripts/ share to run the real thing: free ports, waiting, the real
`python server.py` (or any serving command) started and stopped, databases on the session's PostgreSQL, the gRPC
service in this process, and small data sets. No test module imports another: they import from here."""
