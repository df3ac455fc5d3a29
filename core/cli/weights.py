"""`medssl weights list|get|import|verify`: the ImageNet weights member A starts from.

``get`` is the only command that uses the network (a public model file from the Hugging Face hub; no image
or label is sent anywhere); ``import`` installs a file brought by hand, for sites without internet.
"""

from __future__ import annotations

import argparse

from core.cli import run_with_progress

EPILOG = """examples:
  medssl weights list
  medssl weights get                                   # convnext_tiny.fb_in1k, the paper's member A
  medssl weights get convnext_atto.d2_in1k
  medssl weights import ~/Downloads/model.safetensors --name convnext_tiny.fb_in1k
  medssl weights verify
The weights folder is $MEDSSL_WEIGHTS_DIR or <user data>/weights; HF_ENDPOINT, HF_TOKEN, HTTPS_PROXY and
HF_HUB_OFFLINE are honoured as by every Hugging Face tool."""


def register_cli(subparsers) -> None:
    from core.models.weights_folder import DEFAULT_WEIGHTS

    p = subparsers.add_parser(
        "weights", help="ImageNet weights: list, download on request, import a file, verify",
        description="Manage the ImageNet weights fine-tuning starts from (--init imagenet).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="weights_command", metavar="ACTION")
    ls = sub.add_parser("list", help="known architectures, which are installed, size, source, licence",
                        description="List the ImageNet weights the app knows (and any other installed file): "
                                    "installed or not, size (download size when not installed), Hugging Face "
                                    "source and licence. Uses no network.")
    ls.set_defaults(handler=_list)
    get = sub.add_parser("get", help="download weights from the Hugging Face hub (resumable, sha256-checked)",
                         description="Download public ImageNet weights from the Hugging Face hub into the weights "
                                     "folder: resumable after an interruption, refused when the file's sha256 "
                                     "differs from the hub's, installed atomically. Only the public model file is "
                                     "requested; no image or label leaves this computer.")
    get.add_argument("name", nargs="?", default=DEFAULT_WEIGHTS,
                     help="timm name with its tag (default %(default)s)")
    get.add_argument("--quiet", action="store_true")
    get.set_defaults(handler=_get)
    imp = sub.add_parser("import", help="install a weights file you brought (no internet needed)",
                         description="Copy a weights file into the weights folder after checking that it loads "
                                     "into its timm model (for computers without internet). The original file is "
                                     "left where it is.")
    imp.add_argument("file", help=".safetensors, .pth or .bin in timm's (or the original) layout")
    imp.add_argument("--name", help="timm name with its tag (default: from the file name)")
    imp.set_defaults(handler=_import)
    ver = sub.add_parser("verify", help="check every installed file: present, same sha256, loads into its model",
                         description="Check every installed weights file: still there, the same sha256 as when it "
                                     "was installed, and loadable into its model. Exit status 1 when one is not.")
    ver.set_defaults(handler=_verify)
    p.set_defaults(handler=lambda args: p.print_help() or 2)


def _list(args) -> int:
    from core.models.download import partial_download
    from core.models.weights import weights_dir
    from core.models.weights_folder import describe_size, list_weights

    entries = list_weights()
    print(f"weights folder: {weights_dir()}")
    print(f"{'name':32s} {'installed':22s} {'size':>9s}  {'source':34s} licence")
    for e in entries:
        if e.installed is not None:
            state = f"yes ({e.installed.sha256[:12]})"
            size = describe_size(e.installed.size)
        else:
            state = "partial download" if partial_download(e.name) else "no"
            size = f"~{describe_size(e.download_size)}" if e.download_size else "?"
        print(f"{e.name:32s} {state:22s} {size:>9s}  {e.hub_id or '-':34s} {e.licence or '-'}")
    return 0


def _get(args) -> int:
    from core.models.download import download_job

    entry = run_with_progress(download_job(args.name), quiet=args.quiet)
    print(f"installed {entry.name}: {entry.path}\n  sha256 {entry.sha256}, {entry.size} bytes, {entry.source}")
    return 0


def _import(args) -> int:
    from core.models.weights_folder import import_weights

    entry = import_weights(args.file, args.name)
    print(f"installed {entry.name}: {entry.path}\n  sha256 {entry.sha256}, {entry.size} bytes")
    return 0


def _verify(args) -> int:
    from core.models.weights import weights_dir
    from core.models.weights_folder import verify_weights

    results = verify_weights()
    if not results:
        print(f"no weights installed in {weights_dir()} (medssl weights get, or medssl weights import FILE)")
        return 0
    for r in results:
        print(f"{'ok ' if r.ok else 'BAD'} {r.name}: {r.path}" + ("" if r.ok else f": {r.reason}"))
    return 0 if all(r.ok for r in results) else 1
