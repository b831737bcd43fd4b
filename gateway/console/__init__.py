"""The web console at /console: a thin browser client of the /admin and /audit APIs.

A signed-in browser holds only a session cookie; the gateway keeps the credential behind it (an API key
or the identity provider's access token) and presents it to the same routes, with the same role checks,
as a curl call would. The console adds no privilege of its own.
"""
