"""Every key of the dashboard: an id, a short description for the footer, a longer one for the help
and the command palette; and the keymap file that rebinds them.

    ~/.config/traintop/keymap.toml      (platformdirs' user config dir for "traintop")
    pause = "p"                         # binding id = keys, comma-separated Textual key names
    lr_up = "plus,k"
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from textual.binding import Binding

from traintop.engine.errors import UserError


def key(keys: str, action: str, short: str, long: str, id: str, show: bool = True, display: str | None = None) -> Binding:
    """A binding with its id, its footer text (`short`) and what the help and palette say (`long`)."""
    return Binding(keys, action, short, show=show, key_display=display, tooltip=long, id=id)


# Steering a live run: in the footer, at every width.
RUN_KEYS = [
    key("space", "pause", "pause", "Pause training at the next step, or resume it", "pause"),
    key("plus,equals_sign", "lr_factor(2.0)", "lr×2", "Double the learning rate", "lr_up", display="+"),
    key("minus", "lr_factor(0.5)", "lr÷2", "Halve the learning rate", "lr_down", display="-"),
    key("l", "type_lr", "lr", "Type an exact learning rate", "lr_set"),
    key("v", "validate", "val", "Validate now (a report: early stopping does not move)", "validate"),
    key("c", "checkpoint", "ckpt", "Save a checkpoint (last.pt) now", "checkpoint"),
    key("e", "early_stopping", "early", "Turn early stopping on or off (the engine's answer is shown)",
        "early_stopping"),
    key("i", "inference", "infer", "Try the model on validation samples or a typed input", "inference"),
]
# What steers the training: dimmed once the run has ended (the inference view goes on answering).
STEERING_ACTIONS = frozenset(b.action.split("(")[0] for b in RUN_KEYS if b.id != "inference")
# An lr-find run's key: in the footer, the help and the palette once a rate is suggested.
LR_FIND_KEYS = [
    key("u", "use_suggested_lr", "train at this lr", "Train the config with lr-find's suggested rate "
        "(traintop run ... --set optim.lr=RATE), the dashboard on the new run", "use_suggested_lr"),
]
# How the curves are shown: in the help and the palette.
VIEW_KEYS = [
    key("y", "log_scale", "log y", "Loss axis: log or linear scale", "log_y", show=False),
    key("s", "smoothing", "smoothing", "Loss smoothing: off, EMA 0.6, 0.9, 0.99", "smoothing", show=False),
    key("m", "next_plot", "next plot", "The cycled plot: the next validation metric, extra scalar or samples/s "
        "(at 80 columns: every plot but the loss)", "next_plot", show=False),
    key("z", "zoom", "zoom", "The steps shown: the whole run, the last 10,000, 1,000 or 100 steps", "zoom",
        show=False),
    key("g", "step_range", "range", "Show a range of steps you type (e.g. 200-800); empty for the whole run",
        "step_range", show=False),
    key("x", "x_axis", "x axis", "The x axis: step, epoch or wall time", "x_axis", show=False),
]
TABS = ["curves", "layers", "inference", "config", "events", "output", "timing", "resources"]
TAB_KEYS = [key(str(i), f"tab('{tab}')", tab, f"Show the {tab.capitalize()} tab", f"tab_{tab}", show=False)
            for i, tab in enumerate(TABS, 1)]
END_KEYS = [
    key("question_mark", "help", "help", "Show every key", "help", display="?"),
    key("q", "quit_run", "quit", "Quit (a live run asks: stop it, or leave it training)", "quit"),
]
COMPARE_KEYS = [*VIEW_KEYS[:2], *VIEW_KEYS[3:],
                key("question_mark", "help", "help", "Show every key", "help", display="?"),
                key("q", "quit", "quit", "Quit (the runs are not touched)", "quit")]


def keymap_path() -> Path:
    """Where the keymap lives: the user config dir (XDG_CONFIG_HOME on Linux), `keymap.toml`."""
    from platformdirs import user_config_dir

    return Path(user_config_dir("traintop", appauthor=False)) / "keymap.toml"


def load_keymap(bindings: list[Binding], path: Path | None = None) -> dict[str, str]:
    """The keymap file's rebindings, checked against the ids of `bindings`; {} when there is no file.

    A mistake names the file, the entry and what is allowed (UserError: exit 2, before the
    dashboard takes the terminal).
    """
    path = path or keymap_path()
    if not path.is_file():
        return {}
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"keymap {path}: {e}; each line is `binding_id = \"keys\"`") from None
    ids = {b.id for b in bindings if b.id}
    keymap = {}
    for name, keys in table.items():
        if name not in ids:
            raise UserError(f"keymap {path}: unknown binding {name!r}; the ids are: {', '.join(sorted(ids))}")
        if not isinstance(keys, str) or not keys.strip() or any(not k.strip() for k in keys.split(",")):
            raise UserError(f"keymap {path}: {name} = {keys!r}; give keys as a string, comma-separated "
                            "(e.g. \"p\", \"ctrl+p\", \"space,p\")")
        keymap[name] = ",".join(k.strip() for k in keys.split(","))
    return keymap


def key_text(app, binding: Binding) -> str:
    """The key(s) of `binding` as the user sees them, after the keymap."""
    keys = getattr(app, "_keymap", {}).get(binding.id or "") if binding.id else None
    if not keys:
        return binding.key_display or binding.key
    return ",".join(app.get_key_display(Binding(k, "")) for k in keys.split(","))


def help_rows(app, sections) -> list[str]:
    """The help's lines: a title per section, then each key, what it does, and the id a keymap
    file rebinds it by."""
    rows: list[str] = []
    for title, bindings in sections:
        rows.append(title)
        rows += [f"{key_text(app, b):>7}  {b.tooltip or b.description}" + (f"  [{b.id}]" if b.id else "")
                 for b in bindings]
        rows.append("")
    return rows


def palette_commands(app, bindings, system_commands, run=None):
    """One palette command per key binding (its description, then its key), and Textual's own
    commands but Quit, which the bindings' quit replaces. `run(binding)` runs its action (by
    default on the app)."""
    from textual.app import SystemCommand

    for binding in bindings:
        if not binding.description:
            continue

        async def go(binding: Binding = binding) -> None:
            if run is not None:
                await run(binding)
            else:
                await app.run_action(binding.action)

        yield SystemCommand(binding.tooltip or binding.description, f"key {key_text(app, binding)}: "
                            f"{binding.description}", go)
    for command in system_commands:
        if command.title != "Quit":
            yield command


def printable(binding: Binding, keymap: dict[str, str]) -> bool:
    """Whether every key of `binding` types a character (so a focused text field takes it instead)."""
    keys = keymap.get(binding.id or "", binding.key)
    return all(len(k.strip()) == 1 or k.strip() in PRINTABLE_NAMES for k in keys.split(","))


PRINTABLE_NAMES = {"space", "plus", "minus", "equals_sign", "question_mark", "full_stop", "comma", "slash",
                   "asterisk", "underscore", "left_square_bracket", "right_square_bracket"}
