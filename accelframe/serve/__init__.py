"""Live sessions: ``accelframe serve`` (docs/serve.md).

- :mod:`~accelframe.serve.hub`: sessions on one live stream loop (admission, outboxes, metrics);
- :mod:`~accelframe.serve.protocol`: the WebSocket messages and close codes;
- :mod:`~accelframe.serve.images`: frames to JPEG and back;
- :mod:`~accelframe.serve.app`: the ASGI app (Starlette) and its page;
- :mod:`~accelframe.serve.cli`: the command.

Only the hub and the protocol import without the ``serve`` extra (Starlette, uvicorn, Pillow).
"""
