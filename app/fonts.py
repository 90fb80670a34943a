"""A font that draws Chinese in matplotlib figures (explanation heatmaps): a CJK font the system has
(Debian's fonts-noto-cjk or fonts-wqy-*), else Noto Sans CJK SC from the `mplfonts` package (a dependency:
it ships the font files, so nothing downloads at run time). matplotlib's default DejaVu Sans has no CJK
glyphs and draws empty boxes.

    from app.fonts import cjk_font
    ax.set_xticklabels(labels, family=cjk_font())
"""
from __future__ import annotations

from functools import cache
from pathlib import Path

SYSTEM = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei", "Droid Sans Fallback")


@cache
def cjk_font() -> str:
    """The family name to pass as `family=`; registers the bundled font on first use."""
    from matplotlib import font_manager
    installed = {f.name for f in font_manager.fontManager.ttflist}
    for name in SYSTEM:
        if name in installed:
            return name
    import mplfonts
    path = Path(mplfonts.__file__).parent / "fonts" / "NotoSansCJKsc-Regular.otf"
    font_manager.fontManager.addfont(str(path))
    return font_manager.FontProperties(fname=str(path)).get_name()
