"""The deployment guide's test uses the TLS proxies and throwaway CA of tests/production."""

from tests.production.conftest import ca, tls_proxy

__all__ = ["ca", "tls_proxy"]
