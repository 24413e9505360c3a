"""The real services on loopback, without Docker, one module per service.

Standard library only: `scripts/services.py` (the command line) runs before the project's
virtualenv exists, and the integration tests import these modules to start services of their own.
"""
