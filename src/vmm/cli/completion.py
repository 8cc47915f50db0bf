"""Shell completion: the bash, zsh and fish scripts, and the names they ask ``vmm __complete`` for.

The scripts complete commands and sub-commands, and VM, image and kernel names. Names come from
``vmm __complete vms|images|kernels``, which lists file names in the data dir (no record is
parsed, no manager imported), so a Tab press costs one short Python start-up.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

HIDDEN = frozenset({"autostop", "__complete"})
VM_COMMANDS = ("start", "stop", "delete", "rm", "ssh", "inspect", "logs", "console")
VERBS = {
    "image": "import list delete build pull",
    "kernel": "import list delete build",
    "mount": "list sync pull",
    "port-forward": "add list remove",
    "network": "show prune",
    "config": "init show",
    "service": "install uninstall status",
    "autostart": "enable disable",
    "completion": "bash zsh fish",
}


def names(kind: str, data_dir: Path) -> list[str]:
    """VM, image or kernel names (or the visible commands) for completion."""
    if kind in ("vms", "images", "kernels"):
        from vmm.store import Store

        store = Store(data_dir)
        return {"vms": store.names, "images": store.image_names, "kernels": store.kernel_names}[kind]()
    if kind == "commands":
        from vmm.cli.parser import COMMAND_MODULES

        return [c for c in COMMAND_MODULES if c not in HIDDEN]
    raise ValueError(kind)


_BASH = r"""# bash completion for vmm: eval "$(vmm completion bash)" (or save it in
# /etc/bash_completion.d/vmm)
_vmm() {
    local cur prev cmd="" i words=""
    local -a pos=()
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            -*) ;;
            *) pos+=("${COMP_WORDS[i]}") ;;
        esac
    done
    case "$prev" in
        --image) words="$(vmm __complete images 2>/dev/null)" ;;
        --kernel) words="$(vmm __complete kernels 2>/dev/null)" ;;
        --engine) words="firecracker qemu" ;;
        --accel) words="auto kvm tcg" ;;
        --ssh-key|--initrd|--vmm|--unit-dir)
            COMPREPLY=($(compgen -f -- "$cur"))
            return ;;
    esac
    if [[ -z "$words" ]]; then
        cmd="${pos[0]:-}"
        if [[ -z "$cmd" ]]; then
            words="$(vmm __complete commands 2>/dev/null) --help --debug --version"
        else
            case "$cmd" in
                __VM_COMMANDS__)
                    [[ ${#pos[@]} -eq 1 ]] && words="$(vmm __complete vms 2>/dev/null)" ;;
__VERB_CASES__
            esac
            if [[ ( "$cmd" == autostart || "$cmd" == mount || "$cmd" == port-forward ) && ${#pos[@]} -eq 2 ]]; then
                words="$(vmm __complete vms 2>/dev/null)"
            elif [[ "$cmd" == image && "${pos[1]:-}" == delete && ${#pos[@]} -eq 2 ]]; then
                words="$(vmm __complete images 2>/dev/null)"
            elif [[ "$cmd" == kernel && "${pos[1]:-}" == delete && ${#pos[@]} -eq 2 ]]; then
                words="$(vmm __complete kernels 2>/dev/null)"
            elif [[ ( "$cmd" == image || "$cmd" == kernel ) && "${pos[1]:-}" == import ]]; then
                COMPREPLY=($(compgen -f -- "$cur"))
                return
            fi
        fi
    fi
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -F _vmm vmm
"""

_ZSH = r"""# zsh completion for vmm: eval "$(vmm completion zsh)" in ~/.zshrc
autoload -U +X compinit && compinit
autoload -U +X bashcompinit && bashcompinit
"""

_FISH = r"""# fish completion for vmm: vmm completion fish > ~/.config/fish/completions/vmm.fish
complete -c vmm -f
complete -c vmm -n __fish_use_subcommand -a '(vmm __complete commands 2>/dev/null)'
complete -c vmm -n '__fish_seen_subcommand_from __VM_COMMANDS__' -a '(vmm __complete vms 2>/dev/null)'
__VERB_LINES__
complete -c vmm -n '__fish_seen_subcommand_from autostart; and __fish_seen_subcommand_from enable disable' -a '(vmm __complete vms 2>/dev/null)'
complete -c vmm -n '__fish_seen_subcommand_from create' -l image -x -a '(vmm __complete images 2>/dev/null)'
complete -c vmm -n '__fish_seen_subcommand_from create' -l kernel -x -a '(vmm __complete kernels 2>/dev/null)'
complete -c vmm -n '__fish_seen_subcommand_from create' -l engine -x -a 'firecracker qemu'
complete -c vmm -n '__fish_seen_subcommand_from create' -l accel -x -a 'auto kvm tcg'
complete -c vmm -n '__fish_seen_subcommand_from create' -l ssh-key -r -F
complete -c vmm -n '__fish_seen_subcommand_from import' -F
"""


def _bash() -> str:
    cases = "\n".join(
        f'                {cmd}) [[ ${{#pos[@]}} -eq 1 ]] && words="{verbs}" ;;'
        for cmd, verbs in VERBS.items()
    )
    return _BASH.replace("__VM_COMMANDS__", "|".join(VM_COMMANDS)).replace("__VERB_CASES__", cases)


def script(shell: str) -> str:
    """The completion script for ``shell`` (bash, zsh or fish)."""
    if shell == "bash":
        return _bash()
    if shell == "zsh":
        return _ZSH + _bash()
    if shell == "fish":
        verbs = "\n".join(
            f"complete -c vmm -n '__fish_seen_subcommand_from {cmd}; and not __fish_seen_subcommand_from {v}' -a '{v}'"
            for cmd, v in VERBS.items()
        )
        return _FISH.replace("__VM_COMMANDS__", " ".join(VM_COMMANDS)).replace(
            "__VERB_LINES__", verbs
        )
    raise ValueError(shell)
