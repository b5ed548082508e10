#!/usr/bin/env bash
# The search widget's unit tests under ipywidgets 7.7.1, the version Google Colab ships.
#
# A second, small environment (.venv/widgets77, about 2 MB): a venv whose own site-packages hold only
# ipywidgets 7.7.1 and sees the course's .venv through a .pth file, so everything else (torch, the
# course_lib checkout, pytest) is the tested stack from constraints.txt. Its own ipywidgets comes first
# on sys.path and shadows the 8.x of .venv. Run after .venv exists (`make test` builds it):
#
#     scripts/test_widgets_77.sh [extra pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

MAIN=.venv
ENV=.venv/widgets77  # inside .venv: git ignores it, and removing .venv removes it
VERSION=7.7.1
test -x "$MAIN/bin/python" || { echo "No $MAIN: build it first (make test or make lab)." >&2; exit 1; }

if ! "$ENV/bin/python" -c "import ipywidgets, sys; sys.exit(ipywidgets.__version__ != '$VERSION')" 2>/dev/null; then
    rm -rf "$ENV"
    "$MAIN/bin/python" -m venv --without-pip "$ENV"
    main_site=$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    own_site=$("$ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$main_site" > "$own_site/course_main_venv.pth"
    # --no-deps: ipywidgets 7's kernel-side needs (traitlets, ipykernel, ipython) are already in .venv; its
    # front-end packages (widgetsnbextension 3, jupyterlab_widgets 1) matter only to a browser.
    "$MAIN/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$own_site" "ipywidgets==$VERSION" "ipython_genutils==0.2.0"
fi

"$ENV/bin/python" -c "import ipywidgets; print('ipywidgets', ipywidgets.__version__, 'from', ipywidgets.__file__)"
"$ENV/bin/python" -m pytest tests/test_search_widget.py -q -p no:cacheprovider "$@"
