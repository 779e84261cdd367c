pytest_plugins = [
    "tests.fixtures.dns",
    "tests.fixtures.receivers",
    "tests.fixtures.relay",
    "tests.fixtures.services",
    "tests.fixtures.webhooks",
]
