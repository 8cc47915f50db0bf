"""``/api/v1/openapi.json``: the API described from one table (also what the tests walk to
check that every endpoint but ``/healthz`` wants authentication)."""

from __future__ import annotations

from vmm import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# (method, path, summary, request body schema or None, success status)
ENDPOINTS: list[tuple[str, str, str, str | None, int]] = [
    ("GET", "/api/v1/vms", "Every VM with its live state", None, 200),
    ("POST", "/api/v1/vms", "Create a VM (does not start it); the CLI's validation", "CreateVm", 201),
    ("GET", "/api/v1/vms/{name}", "One VM, with its port forwards", None, 200),
    ("DELETE", "/api/v1/vms/{name}", "Delete a VM (?force=1 stops it first): a job", None, 202),
    ("POST", "/api/v1/vms/{name}/start", "Start a VM and (wait) until SSH answers: a job", "Start", 202),
    ("POST", "/api/v1/vms/{name}/stop", "Stop a VM (graceful, then SIGTERM, SIGKILL): a job", "Stop", 202),
    ("GET", "/api/v1/vms/{name}/forwards", "A VM's port forwards", None, 200),
    ("POST", "/api/v1/vms/{name}/forwards", "Add a port forward", "Forward", 201),
    ("DELETE", "/api/v1/vms/{name}/forwards/{key}", "Remove a port forward ([ADDR:]HOSTPORT[/proto])", None, 200),
    ("GET", "/api/v1/vms/{name}/console", "The end of the console log (text)", None, 200),
    ("GET", "/api/v1/vms/{name}/console/stream", "The console log followed live (SSE 'log' events)", None, 200),
    ("GET", "/api/v1/vms/{name}/mounts", "A VM's mounts and whether the guest changed them", None, 200),
    ("POST", "/api/v1/vms/{name}/mounts/{tag}/sync", "Rebuild a mount's disk from the host (VM stopped): a job", "Force", 202),
    ("POST", "/api/v1/vms/{name}/mounts/{tag}/pull", "Copy a mount's files back to the host (VM stopped): a job", "Pull", 202),
    ("PUT", "/api/v1/vms/{name}/autostart", "Start the VM when the host boots, or not", "Autostart", 200),
    ("GET", "/api/v1/forwards", "Every port forward", None, 200),
    ("GET", "/api/v1/images", "Images", None, 200),
    ("POST", "/api/v1/images/import", "Import an image from a path on the host: a job", "ImportImage", 202),
    ("POST", "/api/v1/images/pull", "Pull Firecracker's CI kernel and rootfs (vmm image pull): a job", "PullImage", 202),
    ("POST", "/api/v1/images/build", "Build a Debian/Ubuntu image with debootstrap: a job", "BuildImage", 202),
    ("DELETE", "/api/v1/images/{name}", "Delete an image (?force=1 even if VMs use it)", None, 200),
    ("GET", "/api/v1/kernels", "Kernels", None, 200),
    ("POST", "/api/v1/kernels/import", "Import a kernel from a path on the host: a job", "ImportKernel", 202),
    ("POST", "/api/v1/kernels/build", "Build a guest kernel from source (~10 min on 2 cores): a job", "BuildKernel", 202),
    ("DELETE", "/api/v1/kernels/{name}", "Delete a kernel (refused while a VM uses it)", None, 200),
    ("GET", "/api/v1/network", "vmm's host network (vmm network show --json)", None, 200),
    ("POST", "/api/v1/network/prune", "Remove vmm-* TAPs no VM uses; rebuild the rules", None, 200),
    ("GET", "/api/v1/doctor", "The host's preflight report (vmm doctor --json)", None, 200),
    ("POST", "/api/v1/doctor/fix", "Remove the leftovers the report names (vmm doctor --fix): a job", None, 202),
    ("GET", "/api/v1/jobs", "Recent jobs", None, 200),
    ("GET", "/api/v1/jobs/{id}", "One job (?wait=S waits up to S seconds for it to end)", None, 200),
    ("GET", "/api/v1/events", "Server-sent events: snapshot, vm, vm-removed, job", None, 200),
    ("GET", "/api/v1/openapi.json", "This document", None, 200),
]  # fmt: skip

_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": _STR, "hint": {"type": ["string", "null"]}, "details": _STR},
    },
    "CreateVm": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{0,62}$"},
            "cpus": _INT, "memory_mb": _INT, "disk_mb": _INT, "image": _STR, "kernel": _STR,
            "engine": _STR, "accel": {"enum": ["auto", "kvm", "tcg"]}, "boot_args": _STR,
            "ip": _STR, "autostart": _BOOL, "ssh_key": {"type": "string", "description": "absolute path of a public key on the host"},
            "dns": {"type": "array", "items": _STR},
            "mounts": {"type": "array", "items": _STR, "description": "/host/path:tag[:ro|rw]"},
        },
    },
    "Start": {"type": "object", "additionalProperties": False,
              "properties": {"wait": _BOOL, "timeout": {"type": "number"}}},
    "Stop": {"type": "object", "additionalProperties": False, "properties": {"timeout": {"type": "number"}}},
    "Force": {"type": "object", "additionalProperties": False, "properties": {"force": _BOOL}},
    "Pull": {"type": "object", "additionalProperties": False,
             "properties": {"to": {"type": "string", "description": "an absolute host path"}, "force": _BOOL}},
    "PullImage": {"type": "object", "additionalProperties": False,
                  "properties": {"name": _STR, "base_url": _STR, "kernel_only": _BOOL, "rootfs_only": _BOOL, "force": _BOOL}},
    "BuildImage": {"type": "object", "required": ["name"], "additionalProperties": False,
                   "properties": {"name": _STR, "suite": _STR, "mirror": _STR, "packages": {"type": "array", "items": _STR},
                                  "size_mb": _INT, "force": _BOOL}},
    "BuildKernel": {"type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"name": _STR, "version": {"enum": ["5.10", "6.1", "6.6"]}, "source": _STR,
                                   "config_fragments": {"type": "array", "items": _STR}, "jobs": _INT, "force": _BOOL}},
    "Autostart": {"type": "object", "required": ["enabled"], "additionalProperties": False,
                  "properties": {"enabled": _BOOL}},
    "Forward": {"type": "object", "required": ["spec"], "additionalProperties": False,
                "properties": {"spec": {"type": "string", "description": "[ADDR:]HOSTPORT:GUESTPORT[/tcp|/udp]"}}},
    "ImportImage": {"type": "object", "required": ["source", "name"], "additionalProperties": False,
                    "properties": {"source": _STR, "name": _STR, "size_mb": _INT, "force": _BOOL, "as_is": _BOOL}},
    "ImportKernel": {"type": "object", "required": ["path", "name"], "additionalProperties": False,
                     "properties": {"path": _STR, "name": _STR, "initrd": _STR, "force": _BOOL}},
}  # fmt: skip


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path, summary, body, status in ENDPOINTS:
        op: dict[str, Any] = {
            "summary": summary,
            "responses": {
                str(status): {"description": "success"},
                "400": {"$ref": "#/components/responses/Error"},
                "401": {"$ref": "#/components/responses/Error"},
                "404": {"$ref": "#/components/responses/Error"},
                "409": {"$ref": "#/components/responses/Error"},
            },
        }
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        if params:
            op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": _STR} for p in params]
        if body:
            op["requestBody"] = {
                "required": body in ("CreateVm", "Forward", "ImportImage", "ImportKernel", "Autostart"),
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
            }
        paths.setdefault(path, {})[method.lower()] = op
    paths["/healthz"] = {"get": {"summary": "Liveness (no authentication)", "security": [],
                                 "responses": {"200": {"description": "ok"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "vmm", "version": __version__,
                 "description": "Firecracker and QEMU microVMs. Errors: {\"error\", \"hint\"} with the CLI's messages; "
                                "long work answers 202 with a job (Location: /api/v1/jobs/ID)."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": {"Error": {"description": "an error", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "the token in /etc/vmm/api-token"},
                "session": {"type": "apiKey", "in": "cookie", "name": "vmm_session",
                            "description": "browser login; state-changing requests also need X-CSRF-Token"},
            },
        },
    }  # fmt: skip
