"""TLS files read before a server starts: a missing or malformed file is named, instead of gRPC's
failure to bind the port or the gateway's traceback once the models have loaded."""
from __future__ import annotations

import ssl


def tls_files_problem(cert_file: str, key_file: str, client_ca_file: str | None = None) -> str | None:
    """Why a server could not use these files (certificate chain, its key, the client CA), or None."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot use --tls-cert {cert_file} with --tls-key {key_file}: {exc}"
    if client_ca_file:
        try:
            context.load_verify_locations(client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            return f"cannot use --client-ca {client_ca_file}: {exc}"
    return None
