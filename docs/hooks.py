"""MkDocs hooks (mkdocs.yml: hooks): put the pipeline's committed plots into the site.

The pages show the figures the pipeline writes to metrics/plots/ and link them as
`../metrics/plots/NAME.png`, which is right when docs/*.md is read in the repository. In the
site the figures are copied to `metrics/plots/` and the links point there, so the plots are
never copied into docs/ by hand (where they would go stale).
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

PLOTS = "metrics/plots"
_LINK = re.compile(r"\]\(\.\./" + re.escape(PLOTS) + "/")


def on_files(files, config):
    root = Path(config["config_file_path"]).parent
    for path in sorted((root / PLOTS).rglob("*.png")):
        files.append(
            File(
                path.relative_to(root).as_posix(),
                src_dir=str(root),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files


def on_page_markdown(markdown, page, config, files):
    return _LINK.sub(f"]({PLOTS}/", markdown)
