"""Welcome page: open a folder, a project, the demo project, or a recent project."""

from __future__ import annotations


from pathlib import Path

from PySide6 import QtCore, QtWidgets

from core import __version__
from core.models.weights_folder import DEFAULT_WEIGHTS
from core.paths import user_data_dir
from desktop import theme
from desktop.widgets.weights_offer import WeightsOffer


class StartPage(QtWidgets.QWidget):
    openFolder = QtCore.Signal()
    openProject = QtCore.Signal()
    openDemo = QtCore.Signal()
    openRecent = QtCore.Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        card = QtWidgets.QFrame()
        card.setObjectName("card")
        card.setFixedWidth(760)
        logo = QtWidgets.QLabel()
        logo.setPixmap(theme.app_icon().pixmap(88, 88))
        title = QtWidgets.QLabel("MedSSL Studio")
        title.setObjectName("title")
        subtitle = QtWidgets.QLabel("Label medical images, draw lesion masks and look inside self-supervised "
                                    "pretraining — on your own computer, offline.")
        subtitle.setObjectName("subtitle")
        subtitle.setWordWrap(True)
        head = QtWidgets.QHBoxLayout()
        head.setSpacing(18)
        head.addWidget(logo, 0, QtCore.Qt.AlignmentFlag.AlignTop)
        tv = QtWidgets.QVBoxLayout()
        tv.setSpacing(4)
        tv.addWidget(title)
        tv.addWidget(subtitle)
        head.addLayout(tv, 1)

        self.demo_btn = self._big_button("demo", "Open demo project", "96 synthetic breast-ultrasound phantoms "
                                         "with masks: try everything safely", primary=True)
        self.folder_btn = self._big_button("open-folder", "Open folder…", "A folder of images (class sub-folders "
                                           "become labels; <name>_mask.png are lesion masks)")
        self.project_btn = self._big_button("open-project", "Open project…", "A project.db from an earlier session")
        self.folder_btn.clicked.connect(self.openFolder)
        self.project_btn.clicked.connect(self.openProject)
        self.demo_btn.clicked.connect(self.openDemo)
        actions = QtWidgets.QVBoxLayout()
        actions.setSpacing(8)
        for b in (self.demo_btn, self.folder_btn, self.project_btn):
            actions.addWidget(b)
        where = QtWidgets.QLabel("Projects live beside their images (<i>folder</i>/.medssl/project.db); your "
                                 "images are never changed or sent anywhere.")
        where.setToolTip(f"For a read-only folder the project lives under {user_data_dir() / 'projects'}")
        where.setObjectName("dim")
        where.setWordWrap(True)
        actions.addWidget(where)
        self.weights = WeightsOffer(DEFAULT_WEIGHTS, self)
        actions.addWidget(self.weights)
        actions.addStretch(1)

        recent_title = QtWidgets.QLabel("Recent projects")
        recent_title.setObjectName("heading")
        self.recent = QtWidgets.QListWidget()
        self.recent.setIconSize(QtCore.QSize(20, 20))
        self.recent.setStyleSheet(f"QListWidget {{ background: {theme.BG}; border: 1px solid {theme.BORDER};"
                                  f" border-radius: 6px; padding: 4px; }}")
        self.recent.itemActivated.connect(lambda it: self.openRecent.emit(it.data(QtCore.Qt.ItemDataRole.UserRole)))
        self.recent.itemClicked.connect(lambda it: self.openRecent.emit(it.data(QtCore.Qt.ItemDataRole.UserRole)))
        self.recent_empty = QtWidgets.QLabel("Projects you open appear here.")
        self.recent_empty.setObjectName("dim")
        rv = QtWidgets.QVBoxLayout()
        rv.setSpacing(8)
        rv.addWidget(recent_title)
        rv.addWidget(self.recent, 1)
        rv.addWidget(self.recent_empty)

        body = QtWidgets.QHBoxLayout()
        body.setSpacing(20)
        body.addLayout(actions, 5)
        body.addLayout(rv, 6)

        foot = QtWidgets.QLabel(f"Version {__version__} · F1 shows the keyboard shortcuts · "
                                "every change is saved at once")
        foot.setObjectName("dim")

        cv = QtWidgets.QVBoxLayout(card)
        cv.setContentsMargins(32, 28, 32, 24)
        cv.setSpacing(22)
        cv.addLayout(head)
        cv.addLayout(body, 1)
        cv.addWidget(foot)
        card.setMinimumHeight(440)

        content = QtWidgets.QWidget()
        outer = QtWidgets.QVBoxLayout(content)
        outer.addStretch(1)
        row = QtWidgets.QHBoxLayout()
        row.addStretch(1)
        row.addWidget(card)
        row.addStretch(1)
        outer.addLayout(row)
        outer.addStretch(2)
        # scrolls on a small screen instead of making the window taller / wider than the screen
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        scroll.setWidget(content)
        lay = QtWidgets.QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(scroll)

    def _big_button(self, icon: str, text: str, detail: str, primary: bool = False) -> QtWidgets.QPushButton:
        b = QtWidgets.QPushButton()
        b.setIcon(theme.icon(icon))
        b.setIconSize(QtCore.QSize(26, 26))
        b.setText(f"  {text}")
        b.setToolTip(detail)
        b.setMinimumHeight(52)
        b.setStyleSheet("QPushButton { text-align: left; padding: 8px 16px; font-size: 11pt; }")
        if primary:
            b.setObjectName("primary")
        return b

    def set_recent(self, folders: list[Path]) -> None:
        self.recent.clear()
        for f in folders:
            it = QtWidgets.QListWidgetItem(theme.icon("recent"), f"{f.name}\n{f.parent}")
            it.setData(QtCore.Qt.ItemDataRole.UserRole, str(f))
            it.setToolTip(str(f))
            it.setSizeHint(QtCore.QSize(0, 44))
            self.recent.addItem(it)
        self.recent.setVisible(bool(folders))
        self.recent_empty.setVisible(not folders)
