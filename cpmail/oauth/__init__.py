"""Sign in with Google and Microsoft, and keep their tokens fresh for the API transports.

``tokens`` (what a sign-in stores, and the words that name an account),
``loopback`` (the browser and the local redirect a sign-in comes back to),
``google`` and ``microsoft``. Nothing is imported here: ``cpmail --help``
stays fast, and each caller imports the one module it needs.
"""
