"""scripts/check_pages.py: the page checks on small synthetic pages (no browser), and one end-to-end run
in headless Chromium on a tiny site (skipped where no chromium binary is installed)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_pages  # noqa: E402

# The shapes below are copied from what myst-nb 1.x / Sphinx 7 / MathJax 3 write into a page.
GOOD_CELL = """
<div class="cell docutils container">
<div class="cell_input docutils container">
<div class="highlight-ipython3 notranslate"><div class="highlight"><pre><span></span><span class="nb">print</span><span class="p">(</span><span class="s2">"Traceback (most recent call last) is just a string here"</span><span class="p">)</span>
<span class="n">plt</span><span class="o">.</span><span class="n">show</span><span class="p">()</span>
</pre></div></div>
</div>
<div class="cell_output docutils container">
<div class="output stream highlight-myst-ansi notranslate"><div class="highlight"><pre><span></span>accuracy 0.93
</pre></div></div>
<figure class="align-default" id="fig-accuracy">
<a class="reference internal image-reference" href="../_images/abc.png"><img alt="Test accuracy against the epoch" src="../_images/abc.png" style="width: 362px;" /></a>
<figcaption>
<p><span class="caption-number">Fig. 3.1 </span><span class="caption-text">Accuracy per epoch.</span><a class="headerlink" href="#fig-accuracy" title="Link to this image">#</a></p>
</figcaption>
</figure>
</div>
</div>
"""

TYPESET_MATH = ('<p>The density <span class="math notranslate nohighlight"><mjx-container class="MathJax CtxtMenu_Attached_0" '
                'jax="CHTML"><mjx-math class="MJX-TEX"><mjx-mi class="mjx-i"><mjx-c class="mjx-c1D465 TEX-I">'
                '</mjx-c></mjx-mi></mjx-math></mjx-container></span> is normal.</p>')


def page(body: str) -> str:
    return f"<!DOCTYPE html><html><head><title>t</title></head><body><main>{body}</main></body></html>"


def test_a_good_page_has_no_problems():
    html = page(GOOD_CELL + TYPESET_MATH + '<div class="admonition warning"><p>Mind the step size.</p></div>')
    assert check_pages.dom_problems(html) == []


def test_a_traceback_block_is_found_with_its_last_line():
    html = page("""<div class="cell docutils container"><div class="cell_output docutils container">
<div class="output traceback highlight-ipythontb notranslate"><div class="highlight"><pre><span></span>
<span class="gt">Traceback (most recent call last)</span>
Cell <span class="nn">In[3], line 1</span>
<span class="ne">ZeroDivisionError</span>: division by zero
</pre></div></div></div></div>""")
    problems = check_pages.dom_problems(html)
    assert problems == ["Python traceback in a cell output: ZeroDivisionError: division by zero"]


def test_button_text_is_not_part_of_a_traceback():
    html = page('<div class="cell_output docutils container"><div class="output traceback"><pre>'
                "Traceback (most recent call last)\nKeyError: 'a'\n</pre>"
                '<button class="copybtn"><span class="tooltip">Copy to clipboard</span></button></div></div>')
    assert check_pages.dom_problems(html) == ["Python traceback in a cell output: KeyError: 'a'"]


def test_repeated_reports_of_a_missing_image_are_dropped():
    problems = ["broken image: a.png (missing file book/a.png)", "HTTP 404 for book/a.png",
                "broken image: a.png has naturalWidth 0 (missing or not an image)",
                "broken image: b.png has naturalWidth 0 (missing or not an image)"]
    assert check_pages._drop_repeats(problems) == [problems[0], problems[3]]


def test_error_output_classes_of_other_renderers_count_as_tracebacks():
    assert check_pages.dom_problems(page('<div class="output error"><pre>ValueError: bad</pre></div>'))
    assert check_pages.dom_problems(page('<div class="output_subarea output_error"><pre>x</pre></div>'))


def test_traceback_text_outside_a_code_input_is_found():
    html = page("<p>Oops</p><pre>Traceback (most recent call last):\n  File x\nKeyError: 1</pre>")
    assert any("Traceback" in p for p in check_pages.dom_problems(html))
    # ... but not inside a cell's input (GOOD_CELL prints that string).
    assert check_pages.dom_problems(page(GOOD_CELL)) == []


def test_stderr_fails_unless_allowed():
    html = page("""<div class="cell_output docutils container"><div class="output stderr highlight-myst-ansi notranslate">
<div class="highlight"><pre>/x/y.py:3: UserWarning: something is off
  warnings.warn(</pre></div></div></div>""")
    assert check_pages.dom_problems(html) == ["stderr in a cell output: /x/y.py:3: UserWarning: something is off"]
    assert check_pages.dom_problems(html, allow_stderr=True) == []


def test_progress_bars_and_figure_reprs_in_outputs():
    bar = page('<div class="cell_output docutils container"><div class="output stream"><pre>'
               "train:  45%|####5     | 45/100 [00:01&lt;00:02, 30.1it/s]</pre></div></div>")
    assert check_pages.dom_problems(bar) == ["progress bar in a cell output: train:  45%|####5     | 45/100 [00:01<00:02, 30.1it/s]"]
    figure = page('<div class="cell_output docutils container"><div class="output text_plain"><pre>'
                  "&lt;Figure size 640x480 with 1 Axes&gt;</pre></div></div>")
    assert check_pages.dom_problems(figure) == [
        "matplotlib figure printed as text instead of drawn: <Figure size 640x480 with 1 Axes>"]


def test_a_cell_that_calls_show_but_has_no_figure():
    no_figure = GOOD_CELL.replace('<img alt="Test accuracy against the epoch" src="../_images/abc.png" style="width: 362px;" />', "")
    assert no_figure != GOOD_CELL
    problems = check_pages.dom_problems(page(GOOD_CELL + no_figure))
    assert len(problems) == 1 and problems[0].startswith("code cell 2 calls plt.show() but shows no figure")
    not_run = GOOD_CELL[:GOOD_CELL.index('<div class="cell_output')] + "</div>"
    problems = check_pages.dom_problems(page(GOOD_CELL + not_run))
    assert len(problems) == 1 and problems[0].startswith("code cell 2 calls plt.show() but has no output at all")


def test_docutils_system_messages_and_problematic_markup():
    html = page('<div class="system-message"><p class="system-message-title">System Message: ERROR/3 '
                '(<span class="docutils literal">x.md</span>, line 4)</p><p>Unknown directive type "fgure".</p></div>'
                '<p>See <a href="#id1"><span class="problematic" id="id2">{eq}`nope`</span></a></p>')
    problems = check_pages.dom_problems(html)
    assert problems[0].startswith("docutils system message: System Message: ERROR/3 (x.md, line 4)")
    assert problems[1] == "unresolved markup (docutils 'problematic'): {eq}`nope`"


def test_mathjax_errors_undefined_macros_and_untypeset_math():
    merror = page('<span class="math notranslate nohighlight"><mjx-container jax="CHTML"><mjx-math>'
                  '<mjx-merror data-mjx-error="Missing close brace" title="Missing close brace">'
                  '<mjx-mtext>Missing close brace</mjx-mtext></mjx-merror></mjx-math></mjx-container></span>')
    assert check_pages.dom_problems(merror) == ["MathJax error: Missing close brace"]
    # MathJax's noundefined extension draws \foo in red: CSS glyphs named by code point (mjx-c5C is the
    # backslash), and, for screen readers, a MathML copy with the text.
    glyphs = "".join(f'<mjx-c class="mjx-c{ord(c):X}"></mjx-c>' for c in "\\foo")
    chtml = page('<span class="math notranslate nohighlight"><mjx-container jax="CHTML"><mjx-math>'
                 f'<mjx-mtext class="mjx-n" style="color: red;">{glyphs}</mjx-mtext></mjx-math></mjx-container></span>')
    assert check_pages.dom_problems(chtml) == ["undefined TeX macro drawn in red by MathJax: \\foo"]
    mathml = page('<span class="math"><mjx-container jax="CHTML"><mjx-assistive-mml><math><mtext mathcolor="red">'
                  '\\foo</mtext><mo>+</mo></math></mjx-assistive-mml></mjx-container></span>')
    assert check_pages.dom_problems(mathml) == ["undefined TeX macro drawn in red by MathJax: \\foo"]
    colored = page('<span class="math"><mjx-container jax="CHTML"><mjx-mstyle style="color: red;">'
                   '<mjx-c class="mjx-c79"></mjx-c></mjx-mstyle></mjx-container></span>')  # \color{red}{y}: fine
    assert check_pages.dom_problems(colored) == []
    # A missing brace swallows the closing \) so MathJax leaves the TeX as it is.
    raw = page(r'<p>Let <span class="math notranslate nohighlight">\(\frac{1}{2\)</span> and</p>'
               r'<div class="math notranslate nohighlight">\[ y \]</div>' + TYPESET_MATH)
    assert check_pages.dom_problems(raw) == [
        "MathJax typeset 1 of 3 math elements; not typeset (a TeX error such as a missing brace?): "
        r"\(\frac{1}{2\), \[ y \]"]
    assert check_pages.dom_problems(raw, expect_math=False) == []
    assert check_pages.dom_problems(page("<p>Math input error</p>")) == ["MathJax: Math input error"]


def test_a_raw_markdown_table():
    html = page("<p>| feature | meaning |\n| \u2014 | \u2014: |\n| CRIM | crime rate |</p>")
    assert check_pages.dom_problems(html)[0].startswith("a Markdown table shown as raw text")
    assert check_pages.dom_problems(page("<p>the norm |x| and |y| of a vector</p>")) == []


def _site(tmp_path: Path) -> Path:
    root = tmp_path / "html"
    (root / "book").mkdir(parents=True)
    (root / "_static").mkdir()
    (root / "_images").mkdir()
    (root / "_images" / "fig.png").write_bytes(b"x")
    (root / "_static" / "theme.html").write_text("<a href='nowhere.html'>x</a>")
    (root / "search.html").write_text("<a href='nowhere.html'>x</a>")
    (root / "genindex.html").write_text("")
    (root / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=book/intro.html" />')
    (root / "book" / "intro.html").write_text(page(
        '<h1 id="top">Intro</h1><a href="#top">ok</a> <a href="other.html#sec">ok</a> <a href="../index.html">ok</a>'
        ' <a href="https://example.org/x.html">external</a> <a href="mailto:a@b">mail</a> <a href="../book/">dir</a>'
        ' <a href="../_static/theme.html?v=1">query</a>'
        ' <figure><img alt="A figure" src="../_images/fig.png"><figcaption><p>Fig. 1 One.</p></figcaption></figure>'
        ' <figure><img alt="An inline figure" src="data:image/png;base64,AAAA"><figcaption><p>Fig. 2 Two.</p>'
        '</figcaption></figure>'))
    (root / "book" / "index.html").write_text(page("dir index"))
    (root / "book" / "other.html").write_text(page(
        '<section id="sec"></section><a href="intro.html#nope">bad anchor</a> <a href="gone.html">dead</a>'
        ' <img src="../_images/missing.png"> <img src="https://example.org/x.png"> <a href="../../outside.html">out</a>'))
    return root


def test_find_pages_skips_search_genindex_and_assets(tmp_path):
    root = _site(tmp_path)
    found = [p.relative_to(root).as_posix() for p in check_pages.find_pages(root)]
    assert found == ["book/index.html", "book/intro.html", "book/other.html", "index.html"]


def test_link_problems_find_dead_links_anchors_and_missing_images(tmp_path):
    root = _site(tmp_path)
    scans = {p.resolve(): check_pages.scan_html(p.read_text()) for p in root.rglob("*.html")}
    ids = {p: s.ids for p, s in scans.items()}
    intro, other, index = root / "book" / "intro.html", root / "book" / "other.html", root / "index.html"
    assert check_pages.link_problems(intro, root, scans[intro.resolve()], ids) == []
    assert check_pages.link_problems(index, root, scans[index.resolve()], ids) == []  # the redirect's target exists
    assert check_pages.link_problems(other, root, scans[other.resolve()], ids) == [
        "broken image: ../_images/missing.png (missing file _images/missing.png)",
        "image from the network (cannot be shown offline): https://example.org/x.png",
        "dead anchor: intro.html#nope (no id 'nope' in book/intro.html)",
        "dead internal link: gone.html (no file book/gone.html)",
        "dead internal link: ../../outside.html (no file outside.html)",  # URLs clamp at the root
    ]


def test_image_problems_from_the_browser():
    images = [{"attr": "a.png", "complete": True, "naturalWidth": 640},
              {"attr": "b.png", "complete": True, "naturalWidth": 0},
              {"attr": "c.png", "complete": False, "naturalWidth": 0},
              {"attr": "sharp.png", "complete": True, "naturalWidth": 1280, "clientWidth": 640},
              {"attr": "soft.png", "complete": True, "naturalWidth": 763, "clientWidth": 700},
              {"attr": "frame.png", "complete": True, "naturalWidth": 700, "clientWidth": 700, "animation": True},
              {"attr": "drawing.svg", "complete": True, "naturalWidth": 300, "clientWidth": 700}]
    assert check_pages.image_problems(images) == [
        "broken image: b.png has naturalWidth 0 (missing or not an image)",
        "broken image: c.png did not finish loading",
        "soft image: soft.png is 763 px wide, shown at 700 px (draw it at least 1.5x its displayed size, "
        "e.g. the retina inline format)"]


def test_a_figure_needs_a_caption_and_alt_text():
    bare = page('<div class="cell_output"><img alt="../_images/abc.png" src="../_images/abc.png" /></div>')
    assert check_pages.dom_problems(bare) == [
        "image whose alt text is a file name (../_images/abc.png): write what it shows",
        "image without a caption (not in a <figure>): ../_images/abc.png"]
    no_alt = page('<figure><img src="x.png"><figcaption><p>A caption.</p></figcaption></figure>')
    assert check_pages.dom_problems(no_alt) == ["image without alt text: x.png"]
    empty = page('<figure><img alt="Loss curves" src="x.png"><figcaption><p> <a class="headerlink">#</a></p>'
                 '</figcaption></figure>')
    assert check_pages.dom_problems(empty) == ["figure without a caption: x.png"]
    frames = page('<div class="animation"><img id="anim_img" src="data:image/png;base64,AAAA"></div>')
    assert check_pages.dom_problems(frames) == []
    icon = page('<a class="btn"><img alt="" src="../_static/images/logo_colab.png"></a>')  # a launch button
    assert check_pages.dom_problems(icon) == []


def test_static_only_run_reports_and_exits_1(tmp_path, capsys):
    root = _site(tmp_path)
    assert check_pages.main([str(root), "--static-only"]) == 1
    out = capsys.readouterr().out
    assert "[pages] FAIL book/other.html" in out and "[pages] ok   book/intro.html" in out
    assert check_pages.main([str(root), "--static-only", "--page", "book/intro.html"]) == 0
    assert check_pages.main([str(tmp_path / "nothing-here"), "--static-only"]) == 2


def _png(width: int, height: int) -> bytes:
    """A grey RGB PNG of the given size, written with the standard library."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + b"\x80" * (3 * width) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# A 40x40 PNG (shown at 20 px: sharp; at 40 px: soft), and a file named .png that is not an image.
PNG_40 = _png(40, 40)


@pytest.mark.slow  # two Chromium starts: about 6 s
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs the chromium binary (apt-get install chromium)")
def test_chromium_end_to_end(tmp_path, capsys):
    root = tmp_path / "html"
    (root / "book").mkdir(parents=True)
    (root / "book" / "dot.png").write_bytes(PNG_40)
    (root / "book" / "corrupt.png").write_bytes(b"this is not a png")
    (root / "book" / "good.html").write_text(page(
        '<h1>Good</h1><figure><img alt="A grey square" src="dot.png" style="width: 20px"><figcaption><p>Fig. 1 A '
        'square.</p></figcaption></figure><a href="bad.html">next</a>'))
    (root / "book" / "bad.html").write_text(page(
        '<h1>Bad</h1><img src="corrupt.png"><img alt="soft" src="dot.png" style="width: 40px">'
        '<link rel="stylesheet" href="gone.css">'
        '<div class="cell_output docutils container"><div class="output traceback"><pre>'
        "Traceback (most recent call last)\nNameError: name 'x' is not defined</pre></div></div>"
        "<script>const once = 1;</script><script>const once = 2;</script>"))
    out = tmp_path / "shots"
    assert check_pages.main([str(root), "--chromium", "chromium", "--out", str(out)]) == 1
    text = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["book/good.html"]["problems"] == []
    bad = report["book/bad.html"]["problems"]
    assert "broken image: corrupt.png has naturalWidth 0 (missing or not an image)" in bad
    assert "HTTP 404 for book/gone.css" in bad
    assert any(p.startswith("soft image: dot.png is 40 px wide, shown at 40 px") for p in bad)
    assert "image without a caption (not in a <figure>): corrupt.png" in bad
    assert "Python traceback in a cell output: NameError: name 'x' is not defined" in bad
    assert any(p.startswith("JavaScript exception: SyntaxError") and "once" in p for p in bad)
    assert (out / "book" / "good.png").read_bytes()[:8] == PNG_40[:8]
    assert (out / "book" / "bad.png").stat().st_size > 1000
    assert "1 passed, 1 failed" in text
    assert check_pages.main([str(root), "--chromium", "chromium", "--no-screenshots", "--page", "book/good.html"]) == 0
