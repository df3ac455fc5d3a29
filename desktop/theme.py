"""Look and feel: a calm dark theme for reading images, icons from ``resources/icons``, class colours."""

from __future__ import annotations


from functools import lru_cache

from PySide6 import QtCore, QtGui, QtWidgets

from core.paths import resources_dir

# Palette (dark, low glare: images are the brightest thing on screen).
BG = "#1d2127"
PANEL = "#252a32"
PANEL_ALT = "#2c323b"
BORDER = "#3a414c"
TEXT = "#dfe4ec"
TEXT_DIM = "#9aa4b2"
ACCENT = "#4e9fd8"
WARN = "#e0a84b"
ERROR = "#e06c75"

# Class colours by class position (no red/green semantics: a class name says nothing about its colour).
CLASS_COLORS = ["#4e9fd8", "#f0a04b", "#b084e0", "#5fbf7f", "#e0607e", "#d6c94a", "#4fc1c1",
                "#c78a5a", "#9aa5b1"]
LESION_COLOR = (235, 87, 87)     # lesion mask fill/contour
HIDDEN_COLOR = (40, 110, 200)    # MAE hidden cells


def class_color(index: int) -> QtGui.QColor:
    if index < 0:
        return QtGui.QColor(TEXT_DIM)
    return QtGui.QColor(CLASS_COLORS[index % len(CLASS_COLORS)])


@lru_cache(maxsize=None)
def icon(name: str) -> QtGui.QIcon:
    path = resources_dir() / "icons" / f"{name}.svg"
    if not path.exists():
        return QtGui.QIcon()
    return QtGui.QIcon(str(path))


def app_icon() -> QtGui.QIcon:
    return icon("app")


STYLESHEET = f"""
QMainWindow, QDialog {{ background: {BG}; }}
QWidget {{ color: {TEXT}; font-size: 10pt; }}
QToolTip {{ color: {TEXT}; background: {PANEL_ALT}; border: 1px solid {BORDER}; padding: 4px; }}
QDockWidget {{ titlebar-close-icon: none; }}
QDockWidget::title {{ background: {PANEL}; padding: 6px 8px; color: {TEXT_DIM};
    font-weight: bold; text-transform: uppercase; }}
QToolBar {{ background: {PANEL}; border: none; border-bottom: 1px solid {BORDER}; spacing: 4px;
    padding: 4px 6px; }}
QToolBar::separator {{ background: {BORDER}; width: 1px; margin: 4px 6px; }}
QToolButton {{ border: 1px solid transparent; border-radius: 5px; padding: 4px 6px; }}
QToolButton:hover {{ background: {PANEL_ALT}; border-color: {BORDER}; }}
QToolButton:checked {{ background: #33475e; border-color: {ACCENT}; }}
QToolButton:disabled {{ color: #5d6672; }}
QPushButton {{ background: {PANEL_ALT}; border: 1px solid {BORDER}; border-radius: 5px;
    padding: 5px 12px; }}
QPushButton:hover {{ border-color: {ACCENT}; }}
QPushButton:pressed {{ background: #33475e; }}
QPushButton:checked {{ background: #33475e; border-color: {ACCENT}; }}
QPushButton:disabled {{ color: #5d6672; border-color: #30363f; }}
QPushButton#primary {{ background: #2f6f9f; border-color: #3d87bd; font-weight: bold; }}
QPushButton#primary:hover {{ background: #377fb5; }}
QLineEdit, QComboBox, QSpinBox, QDoubleSpinBox {{ background: {BG}; border: 1px solid {BORDER};
    border-radius: 4px; padding: 3px 6px; selection-background-color: {ACCENT}; }}
QLineEdit:focus, QComboBox:focus, QSpinBox:focus, QDoubleSpinBox:focus {{ border-color: {ACCENT}; }}
QComboBox QAbstractItemView {{ background: {PANEL_ALT}; border: 1px solid {BORDER};
    selection-background-color: #33475e; }}
QListView, QListWidget, QTreeView, QTableWidget {{ background: {BG}; border: none; outline: 0; }}
QListWidget::item {{ padding: 4px 6px; border-radius: 4px; }}
QListWidget::item:selected {{ background: #33475e; color: {TEXT}; }}
QListWidget::item:hover {{ background: {PANEL_ALT}; }}
QHeaderView::section {{ background: {PANEL}; color: {TEXT_DIM}; border: none; padding: 4px; }}
QScrollBar:vertical {{ background: {BG}; width: 12px; margin: 0; }}
QScrollBar::handle:vertical {{ background: #3d4550; border-radius: 5px; min-height: 30px; margin: 2px; }}
QScrollBar::handle:vertical:hover {{ background: #4b5562; }}
QScrollBar:horizontal {{ background: {BG}; height: 12px; margin: 0; }}
QScrollBar::handle:horizontal {{ background: #3d4550; border-radius: 5px; min-width: 30px; margin: 2px; }}
QScrollBar::add-line, QScrollBar::sub-line {{ width: 0; height: 0; }}
QScrollBar::add-page, QScrollBar::sub-page {{ background: none; }}
QGroupBox {{ border: 1px solid {BORDER}; border-radius: 6px; margin-top: 14px; padding: 10px 8px 8px 8px; }}
QGroupBox::title {{ subcontrol-origin: margin; left: 10px; padding: 0 4px; color: {TEXT_DIM};
    font-weight: bold; }}
QGroupBox::indicator {{ width: 14px; height: 14px; }}
QCheckBox {{ spacing: 6px; }}
QRadioButton {{ spacing: 6px; }}
QRadioButton::indicator {{ width: 12px; height: 12px; border-radius: 7px; border: 2px solid {TEXT_DIM};
    background: {BG}; }}
QRadioButton::indicator:checked {{ border: 2px solid {ACCENT}; background: qradialgradient(cx: 0.5, cy: 0.5,
    radius: 0.5, fx: 0.5, fy: 0.5, stop: 0 {ACCENT}, stop: 0.55 {ACCENT}, stop: 0.65 {BG}, stop: 1 {BG}); }}
QRadioButton::indicator:disabled {{ border-color: {BORDER}; }}
QSlider::groove:horizontal {{ height: 4px; background: {BORDER}; border-radius: 2px; }}
QSlider::sub-page:horizontal {{ background: {ACCENT}; border-radius: 2px; }}
QSlider::handle:horizontal {{ background: {TEXT}; width: 12px; height: 12px; margin: -5px 0;
    border-radius: 6px; }}
QSlider::handle:horizontal:disabled {{ background: #5d6672; }}
QProgressBar {{ background: {BG}; border: 1px solid {BORDER}; border-radius: 4px; text-align: center;
    height: 14px; font-size: 9pt; }}
QProgressBar::chunk {{ background: {ACCENT}; border-radius: 3px; }}
QStatusBar {{ background: {PANEL}; border-top: 1px solid {BORDER}; color: {TEXT_DIM}; }}
QStatusBar QLabel {{ color: {TEXT_DIM}; padding: 0 6px; }}
QTabBar::tab {{ background: transparent; padding: 6px 14px; border-bottom: 2px solid transparent;
    color: {TEXT_DIM}; }}
QTabBar::tab:selected {{ color: {TEXT}; border-bottom-color: {ACCENT}; }}
QMenuBar {{ background: {PANEL}; }}
QMenuBar::item:selected {{ background: {PANEL_ALT}; }}
QMenu {{ background: {PANEL_ALT}; border: 1px solid {BORDER}; padding: 4px; }}
QMenu::item {{ padding: 5px 24px 5px 24px; border-radius: 4px; }}
QMenu::item:selected {{ background: #33475e; }}
QMenu::separator {{ height: 1px; background: {BORDER}; margin: 4px 8px; }}
QLabel#heading {{ font-size: 11pt; font-weight: bold; }}
QLabel#dim {{ color: {TEXT_DIM}; }}
QLabel#title {{ font-size: 22pt; font-weight: bold; }}
QLabel#subtitle {{ font-size: 11pt; color: {TEXT_DIM}; }}
QFrame#card {{ background: {PANEL}; border: 1px solid {BORDER}; border-radius: 10px; }}
QFrame#sidepanel {{ background: {PANEL}; }}
QSplitter::handle {{ background: {BORDER}; }}
"""


def apply_theme(app: QtWidgets.QApplication) -> None:
    """Fusion style + dark palette + the stylesheet above."""
    app.setStyle("Fusion")
    pal = QtGui.QPalette()
    c = QtGui.QColor
    roles = QtGui.QPalette.ColorRole
    pal.setColor(roles.Window, c(BG))
    pal.setColor(roles.WindowText, c(TEXT))
    pal.setColor(roles.Base, c(BG))
    pal.setColor(roles.AlternateBase, c(PANEL))
    pal.setColor(roles.ToolTipBase, c(PANEL_ALT))
    pal.setColor(roles.ToolTipText, c(TEXT))
    pal.setColor(roles.Text, c(TEXT))
    pal.setColor(roles.Button, c(PANEL_ALT))
    pal.setColor(roles.ButtonText, c(TEXT))
    pal.setColor(roles.Highlight, c(ACCENT))
    pal.setColor(roles.HighlightedText, c("#ffffff"))
    pal.setColor(roles.Link, c(ACCENT))
    pal.setColor(roles.PlaceholderText, c(TEXT_DIM))
    for role in (roles.WindowText, roles.Text, roles.ButtonText):
        pal.setColor(QtGui.QPalette.ColorGroup.Disabled, role, c("#5d6672"))
    app.setPalette(pal)
    font = app.font()
    if font.pointSizeF() < 9.5:
        font.setPointSizeF(10)
        app.setFont(font)
    app.setStyleSheet(STYLESHEET)


def hline() -> QtWidgets.QFrame:
    line = QtWidgets.QFrame()
    line.setFrameShape(QtWidgets.QFrame.Shape.HLine)
    line.setStyleSheet(f"color: {BORDER}; background: {BORDER}; max-height: 1px;")
    return line


def swatch_icon(color: QtGui.QColor | str, size: int = 12, *, round_: bool = True) -> QtGui.QIcon:
    pm = QtGui.QPixmap(size, size)
    pm.fill(QtCore.Qt.GlobalColor.transparent)
    p = QtGui.QPainter(pm)
    p.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
    p.setPen(QtCore.Qt.PenStyle.NoPen)
    p.setBrush(QtGui.QColor(color))
    if round_:
        p.drawEllipse(1, 1, size - 2, size - 2)
    else:
        p.drawRoundedRect(1, 1, size - 2, size - 2, 2, 2)
    p.end()
    return QtGui.QIcon(pm)
