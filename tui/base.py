"""What the run screen and the comparison share: the view keys (log axis, smoothing, zoom, a range
of steps, the x axis, the cycled plot), the keymap, the help and the command palette, the layout
that follows the terminal's size, and the redraw clock.
"""

from __future__ import annotations

import os

from textual.binding import Binding
from textual.widgets import Input

from .view import WINDOWS, X_AXES, View, smoothing_alpha
from .keys import help_rows, load_keymap, palette_commands, printable
from .literal import LiteralApp
from .screens import HelpScreen, RangeScreen

REDRAW_SECONDS = 0.1


def narrow(size) -> bool:
    """80×24 and the like: two plots, one above the other."""
    return size.width < 110 or size.height < 30


class CurvesApp(LiteralApp):
    """An app of curves: subclasses set BINDINGS, compose the plots, and draw them in `_redraw`."""

    CSS_PATH = "app.tcss"
    TITLE = "traintop"

    def __init__(self):
        super().__init__()
        self.view = View()
        self.drawn_view: tuple = ()
        self.no_color = "NO_COLOR" in os.environ
        self.keymap = load_keymap(self.every_binding())
        if self.keymap:
            self.set_keymap(self.keymap)
        self._typed_actions = {b.action.split("(")[0] for b in self.BINDINGS if printable(b, self.keymap)}

    def every_binding(self) -> list[Binding]:
        """Every key the keymap may rebind: the app's, and its views'."""
        return list(self.BINDINGS)

    def help_sections(self) -> list[tuple[str, list[Binding]]]:
        return [("keys", list(self.BINDINGS))]

    # -- compatibility with code that reads the view's parts by name --------------------------------

    @property
    def log_y(self) -> bool:
        return self.view.log_y

    @property
    def smoothing(self) -> int:
        return self.view.smoothing

    @property
    def narrow(self) -> bool:
        """80×24 and the like: two plots, one above the other."""
        return narrow(self.size)

    # -- layout, palette, help ----------------------------------------------------------------------

    def on_resize(self, event=None) -> None:
        size = self.size if event is None else event.size  # self.size may still be the one before
        screen = self.screen_stack[0]
        screen.query_one("#plots").set_class(narrow(size), "narrow")
        screen.query_one("#side").set_class(size.width < 70, "hidden")
        self.drawn_view = ()  # what the second plot shows depends on the layout

    def get_system_commands(self, screen):
        """The command palette: every key's action with its description, and Textual's own commands
        (but its Quit, which would not ask what to do with a live run)."""
        yield from palette_commands(self, self.palette_bindings(), super().get_system_commands(screen),
                                    self.run_binding)

    def palette_bindings(self) -> list[Binding]:
        return list(self.BINDINGS)

    async def run_binding(self, binding: Binding) -> None:
        await self.run_action(binding.action)

    def action_help(self) -> None:
        self.push_screen(HelpScreen(help_rows(self, self.help_sections())))

    def check_action(self, action: str, parameters) -> bool | None:
        """While a text field has the keyboard, the keys that type characters go to it: their
        actions are off (and out of the footer), so the footer never shows a key that would not act."""
        if isinstance(self.focused, Input) and action in self._typed_actions:
            return False
        return True

    def on_descendant_focus(self, event) -> None:
        self._refresh_footer()

    def on_descendant_blur(self, event) -> None:
        self._refresh_footer()

    def _refresh_footer(self) -> None:
        # A blur also comes while the app closes, after its last screen is gone: nothing to redraw.
        if self.screen_stack:
            self.refresh_bindings()

    # -- the view keys -------------------------------------------------------------------------------

    def changed(self, message: str) -> None:
        """The view changed: say how it is now, and draw it at once."""
        self.notify(message)
        self.drawn_view = ()
        self.redraw()

    def action_log_scale(self) -> None:
        self.view.log_y = not self.view.log_y
        self.changed(f"loss axis: {'log' if self.view.log_y else 'linear'}")

    def action_smoothing(self) -> None:
        self.view.smoothing += 1
        alpha = smoothing_alpha(self.view)
        self.changed(f"smoothing: {'off' if not alpha else f'EMA {alpha}'}")

    def action_x_axis(self) -> None:
        i = X_AXES.index(self.view.x_axis)
        self.view.x_axis = X_AXES[(i + 1) % len(X_AXES)]
        self.changed(f"x axis: {self.axis_words()}")

    def axis_words(self) -> str:
        return {"step": "steps", "epoch": "epochs", "time": "wall time"}[self.view.x_axis]

    def last_step(self) -> float:
        raise NotImplementedError

    def action_zoom(self) -> None:
        """The whole run, then its last 10,000, 1,000 and 100 steps (those shorter than the run)."""
        last = self.last_step()
        windows = [w for w in WINDOWS if w is None or w < last] or [None]
        current = self.view.window if self.view.range is None else "range"
        i = windows.index(current) if current in windows else -1
        self.view.range = None
        self.view.window = windows[(i + 1) % len(windows)]
        self.changed(f"showing the {self.view.describe()}")

    def action_step_range(self) -> None:
        def chosen(value) -> None:
            if value is None:
                return
            self.view.range = value or None
            self.view.window = None
            self.changed(f"showing the {self.view.describe()}")
        self.push_screen(RangeScreen(int(self.last_step())), chosen)

    def action_next_plot(self) -> None:
        self.view.choice += 1
        self.drawn_view = ()
        self.redraw()

    def view_words(self) -> str:
        """How the curves are shown, when not as they start: for the header."""
        parts = []
        if self.view.range is not None or self.view.window is not None:
            parts.append(self.view.describe())
        if self.view.x_axis != "step":
            parts.append(f"x: {self.view.x_axis}")
        return " · ".join(parts)

    def redraw(self) -> None:
        raise NotImplementedError
