"""Developer tooling, apart from the runtime: the dev stack (Kafka and Mosquitto on
loopback, ``devstack``), the programs set-up installs (``system_packages``) and the demo
(``demo``). Production processes never import this package; the CLI, tests and
benchmarks do.
"""
