"""Schemathesis hooks for the run against the local stack (scripts/test).

The local emulator, `cargo lambda watch`, answers a request body that is
not UTF-8 with a 500 of its own, before any function runs. API Gateway
hands such a body to the function base64-encoded, and the function answers
400 `invalid_request` (in-process:
`malformed_bodies_content_types_and_repeated_keys_get_clean_4xx_codes`).
So such bodies are made UTF-8 here, and the run still checks that every
other malformed body gets a clean 4xx.
"""

import schemathesis


@schemathesis.hook
def before_call(ctx, case, kwargs):
    body = case.body
    if isinstance(body, (bytes, bytearray)):
        try:
            bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            case.body = bytes(body).decode("utf-8", "replace").encode("utf-8")
