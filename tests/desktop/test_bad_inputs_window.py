"""The bad-input corpus opened in the real window: the scan-problems list names every bad file with its
reason and every identical file the project merged into another, the other images are in the library, and
the only thing written is the project beside the images."""

from __future__ import annotations

from tests.bad_inputs import check_handled, make_corpus, rel_to, tree


def test_open_folder_lists_each_unreadable_file_with_its_reason(qtbot, main_window, tmp_path):
    from core.paths import PROJECT_DIR_NAME

    root = tmp_path / "corpus"
    bad, maybe = make_corpus(root)
    before = tree(root)
    assert main_window.open_path(root)
    qtbot.waitUntil(lambda: main_window.project.scan_complete, timeout=60000)
    button = main_window.scan_problems
    assert button.isVisibleTo(main_window)
    dlg = button.open_list()
    qtbot.addWidget(dlg)
    rows = [(dlg.tree.topLevelItem(i).text(0), dlg.tree.topLevelItem(i).text(1))
            for i in range(dlg.tree.topLevelItemCount())]
    from desktop.widgets.scan_problems import IDENTICAL_REASON

    errors = {rel_to(root, path): reason for path, reason in rows if reason != IDENTICAL_REASON}
    merged = {}
    for files, reason in rows:
        if reason == IDENTICAL_REASON:
            kept, *others = files.split(" = ")
            merged.update({name: f"{reason} ({kept})" for name in others})
    imported = {it.rel_path for it in main_window.library.model.rows if it.image_id is not None}
    check_handled("window open-folder", imported, {**errors, **merged}, bad, maybe)
    assert imported == maybe - set(errors) - set(merged) and len(merged) == 5   # plain.png has five copies
    assert f"{len(errors)} unreadable files" in button.text() and "5 identical files merged" in button.text()
    dlg.close()
    after = {name: size for name, size in tree(root).items() if not name.startswith(PROJECT_DIR_NAME)}
    assert after == before                      # the project folder (.medssl) is all the window wrote
