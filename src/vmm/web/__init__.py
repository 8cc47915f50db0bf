"""``vmm serve``: a JSON API (``/api/v1``) and a live web UI over the same services as the CLI.

The server is optional: nothing else in vmm imports this package, and it imports its web stack
(Starlette, uvicorn, Jinja2 — the ``web`` extra) only when ``vmm serve`` runs. It never calls
the CLI: ``vmm.cli.serve`` builds the composition root (``vmm.app.Vmm``) and hands it over.

    auth      the bearer token file, the password hash, sessions, CSRF, login rate limiting
    events    the records directory watched with inotify + pidfds of running VMs -> SSE events
    jobs      long work (start and wait for SSH, stop, delete, imports, pulls, builds, doctor
              --fix) in threads, with progress
    api       the JSON API; errors are VmmError -> status + {"error", "hint"}; api_host (images,
              kernels, network, doctor), api_extra (mounts, autostart, prune), api_build (pull
              and builds)
    ui        server-rendered pages (Jinja2 + vendored htmx), updated live from the events;
              ui_host (job panels, the doctor page), ui_images (imports, pull, builds)
    security  the middleware: authentication, CSRF, size limits, security headers
    server    the ASGI app and uvicorn, bound to loopback unless told otherwise
"""
