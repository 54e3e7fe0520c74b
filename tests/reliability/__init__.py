"""The reliability suite: crashes, torn writes, disk full, hostile files and
many processes (issue 5). ``conftest.py`` collects the figures it prints and
writes as JSON; ``UNSTOPPABLE_SOAK=1`` turns the CI-length runs into a soak."""
