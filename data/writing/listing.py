"""What to write into shards: the samples of a folder or a manifest, listed, not yet read.

Two folder layouts (see :func:`list_folder`), captions from file names, and CSV / JSONL
manifests (see :func:`samples_from_manifest`) give :class:`SampleSource` lists for
:func:`multimodal.data.writing.writer.write_shards`. Listing reads no media: it groups files by
name, pairs them by the one rule of :mod:`multimodal.data.writing.pairing`, keys them by the rule
of :mod:`multimodal.data.writing.keys`, and decides what each file is for.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from multimodal.data.writing.keys import make_key
from multimodal.data.writing.manifests import samples_from_manifest
from multimodal.data.modalities.registry import (
    IMAGE_EXTENSIONS,
    MEDIA_EXTENSIONS,
    MEDIA_MODALITIES,
    get_modality,
    modality_of_extension,
    normalize_extension,
)
from multimodal.data.writing.pairing import (
    CAPTION_EXTENSION,
    EXTRA_EXTENSION,
    READ_EXTENSIONS,
    UNUSED_REASONS,
    VECTOR_EXTENSIONS,
    Draft,
    SampleSource,
    keyed_samples,
    media_modality,
    pair_media,
)

DEFAULT_CAPTION_TEMPLATES = {name: get_modality(name).class_caption for name in MEDIA_MODALITIES}
LAYOUTS = ("auto", "captions", "classes")
# Where captions come from: "auto" by the layout (caption files, or the class folder's name);
# "names": each file's name; "names+folders": its folders, then its name.
CAPTION_SOURCES = ("auto", "names", "names+folders")
# The automatic layout reads caption files when at least this share of the media files has one.
CAPTIONED_SHARE = 0.5


@dataclass(frozen=True)
class FolderListing:
    """The samples of a folder, the layout they were listed by, and why (one line, for the report).

    ``class_names``: for the class-folder layout, the classes in words in label order (label
    ``i`` is ``class_names[i]``), for the writer to record beside the shards; else None.
    """

    samples: list[SampleSource]
    layout: str
    decision: str
    class_names: list[str] | None = None


def visible_files(root: Path) -> list[Path]:
    """Every file under ``root``, sorted, leaving out hidden files and whatever is in hidden folders.

    Linked folders are followed (a class folder is often a link to where the files are),
    each real folder once, so a link back up the tree cannot loop.
    """
    files, seen = [], set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders.clear()
            continue
        seen.add(real)
        # Sorted, so which of two links to one folder is read is the same on every machine.
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        files.extend(Path(folder) / name for name in names if not name.startswith("."))
    return sorted(path for path in files if path.is_file())


def class_root(root: Path, files: list[Path]) -> Path:
    """Where the class folders are: ``root``, or the one folder inside it that holds everything.

    A folder holding no file of its own and one sub-folder only wraps the classes (a download
    unpacked into ``data/birds/``): every file under it would have one class, so the classes
    are looked for inside, and so on down while that holds.
    """
    parts = [path.relative_to(root).parts for path in files]
    depth = 0
    while parts and all(len(each) > depth + 2 for each in parts) and len({each[depth] for each in parts}) == 1:
        depth += 1
    return root.joinpath(*parts[0][:depth]) if depth else root


def class_folder_files(root: Path, files: list[Path] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """The one rule by which class sub-folders are labelled, in ``shards`` and ``eval`` alike.

    The classes are the sub-folders of :func:`class_root` holding at least one visible file (at
    any depth), sorted by name; a class's label is its place in that order. Returns (the class
    folders' names, every visible file inside them with its label), ``files`` being
    :func:`visible_files` of ``root`` when not given. Files beside the folders belong to none.
    """
    files = visible_files(root) if files is None else files
    top = class_root(root, files)
    in_classes = [path for path in files if len(path.relative_to(top).parts) > 1]
    names = sorted({path.relative_to(top).parts[0] for path in in_classes})
    labels = {name: index for index, name in enumerate(names)}
    return names, [(path, labels[path.relative_to(top).parts[0]]) for path in in_classes]


def class_name_in_words(folder: str) -> str:
    """A class folder's name as captions and class lists say it: ``golden_retriever`` -> ``golden retriever``."""
    return folder.replace("_", " ")


def name_in_words(name: str) -> str:
    """A file or folder name as a caption says it: ``polar_bear`` -> ``polar bear``, ``snare-drum`` -> ``snare drum``."""
    return " ".join(name.replace("_", " ").replace("-", " ").split())


def caption_from_name(relative_stem: str, with_folders: bool = False) -> str:
    """The caption ``--captions names`` gives a file: its name in words (:func:`name_in_words`).

    With ``with_folders``, the folders come first as context, separated by ``, `` and
    followed by ``: ``: ``animals/arctic/polar_bear`` -> ``animals, arctic: polar bear``.
    """
    *folders, name = Path(relative_stem).parts
    words = name_in_words(name)
    context = [name_in_words(folder) for folder in folders if name_in_words(folder)]
    return f"{', '.join(context)}: {words}" if with_folders and context and words else words


def _stem_groups(root: Path, files: list[Path]) -> dict[str, list[Path]]:
    """Files by relative path without extension (``animals/cat``), in sorted order."""
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(path.relative_to(root).with_suffix("").as_posix(), []).append(path)
    return dict(sorted(groups.items()))


def _sorted_by_kind(paths: list[Path]) -> tuple[list[Path], list[Path], list[Path], list[Path]]:
    """(media, caption files, fields files, files of types not read), each sorted."""
    kinds = {"media": [], CAPTION_EXTENSION: [], EXTRA_EXTENSION: [], "other": []}
    for path in sorted(paths):
        extension = normalize_extension(path.suffix)
        if extension in READ_EXTENSIONS:
            kinds["media"].append(path)
        else:
            kinds.get(extension, kinds["other"]).append(path)
    return kinds["media"], kinds[CAPTION_EXTENSION], kinds[EXTRA_EXTENSION], kinds["other"]


def _caption_templates(caption_template: str | Mapping[str, str] | None, default: Mapping[str, str]) -> dict[str, str]:
    if caption_template is None:
        templates = dict(default)
    elif isinstance(caption_template, str):
        templates = dict.fromkeys(MEDIA_MODALITIES, caption_template)
    else:
        templates = {**default, **caption_template}
    for modality, template in templates.items():
        if "{}" not in template:
            raise ValueError(f"caption template for {modality} {template!r} needs a '{{}}' where the name goes")
    return templates


def _template_for(templates: Mapping[str, str], media: Mapping[str, Path]) -> str:
    """The template of the sample's first modality in registry order (an image and its sound: the image's)."""
    present = {media_modality(path) for path in media.values()}
    return next(templates[modality] for modality in MEDIA_MODALITIES if modality in present)


def _first_of_each(captions: list[Path], extras: list[Path]) -> tuple[Path | None, Path | None, list[tuple[Path, str]]]:
    """The caption file and fields file of a name, and the further ones (x.txt beside x.TXT) as unused."""
    unused = [(path, "same_name_twice") for path in captions[1:] + extras[1:]]
    return (captions[0] if captions else None), (extras[0] if extras else None), unused


def _group_drafts(
    root: Path, stem: str, paths: list[Path], captions: str, class_captions: Mapping[Path, tuple[str, int]] | None,
    templates: Mapping[str, str],
) -> list[Draft]:
    """The samples of the files sharing one relative stem, captioned from ``captions``.

    ``class_captions``: for the class-folder layout, each file in a class folder -> (class
    name in words, label); None for the other layouts.
    """
    media, caption_files, extra_files, others = _sorted_by_kind(paths)
    ignored = tuple(others)
    if class_captions is not None and captions == "auto":
        caption_file, extra_file = None, None
        unused = [(path, "captions_from_classes") for path in caption_files + extra_files]
    else:
        caption_file, extra_file, unused = _first_of_each(caption_files, extra_files)
        if captions != "auto":
            unused += [(path, "captions_from_names") for path in caption_files]
            caption_file = None
    pairs = pair_media(stem, media)
    if not pairs:
        # A caption or fields file without media (the writer says no_media), or unread files only.
        return [Draft(stem, {}, caption_file, extra_file, f"{root / stem}.*", ignored, tuple(unused))]
    drafts = []
    for index, (name, sample_media) in enumerate(pairs):
        caption, extra = caption_file, extra_file
        if captions != "auto":
            caption = _template_for(templates, sample_media).format(caption_from_name(stem, captions == "names+folders"))
        if class_captions is not None:
            classes = [class_captions[path] for path in sample_media.values() if path in class_captions]
            if classes:
                class_name, label = classes[0]
                extra = {"label": label, "class_name": class_name}
                if captions == "auto":
                    caption = _template_for(templates, sample_media).format(class_name)
        single = len(sample_media) == 1 and (class_captions is not None or index > 0)
        origin = str(next(iter(sample_media.values()))) if single else f"{root / stem}.*"
        # The files of the name that are not media go with its first sample, to be counted once.
        first = index == 0
        drafts.append(Draft(name, sample_media, caption, extra, origin, ignored if first else (),
                            tuple(unused) if first else ()))
    return drafts


def _class_captions(root: Path, files: list[Path]) -> dict[Path, tuple[str, int]]:
    names, labelled = class_folder_files(root, files)
    return {path: (class_name_in_words(names[label]), label) for path, label in labelled}


def _class_names(class_captions: Mapping[Path, tuple[str, int]]) -> list[str] | None:
    """The class names in label order (labels 0 to n-1: every class folder holds a file), None without classes."""
    by_label = {label: name for name, label in class_captions.values()}
    return [by_label[label] for label in range(len(by_label))] or None


def _count_captioned(groups: Mapping[str, list[Path]]) -> dict[str, tuple[int, int]]:
    """Per modality, in registry order: (files with a same-name caption file, files)."""
    counts = {modality: [0, 0] for modality in MEDIA_MODALITIES}
    for paths in groups.values():
        found, caption_files, _, _ = _sorted_by_kind(paths)
        for path in found:
            counts[media_modality(path)][0] += bool(caption_files)
            counts[media_modality(path)][1] += 1
    return {modality: (captioned, total) for modality, (captioned, total) in counts.items() if total}


def _captioned_share(counts: Mapping[str, tuple[int, int]]) -> str:
    """``"951 of 1,040 pictures and 217 of 7,873 sounds have a same-name .txt caption"``."""
    parts = [f"{captioned:,} of {total:,} {get_modality(modality).files_called or modality + ' files'}"
             for modality, (captioned, total) in counts.items()]
    return f"{' and '.join(parts) or 'no media file'} {'have' if parts else 'has'} a same-name .txt caption"


def choose_layout(root: Path, files: list[Path], layout: str, captions: str) -> tuple[str, str]:
    """The layout to list ``root`` by and why, in words: ``("classes", "classes: ...")``.

    ``"auto"`` reads caption files when at least :data:`CAPTIONED_SHARE` of the files of one
    modality have one (captioned pictures beside many uncaptioned sounds are a folder of captions;
    a stray ``README.txt`` or ``Licence.txt`` does not make one),
    else class folders when there are any, else the caption files there are; a folder with
    none of these is an error that suggests captions from names. With captions from names,
    ``"auto"`` groups files by name and labels nothing.
    """
    groups = _stem_groups(root, files)
    counts = _count_captioned(groups)
    share = _captioned_share(counts)
    captioned = sum(found for found, _ in counts.values())
    half_captioned = any(found and found >= CAPTIONED_SHARE * total for found, total in counts.values())
    if captions != "auto":
        chosen = "classes" if layout == "classes" else "captions"
        source = "folders, then name" if captions == "names+folders" else "name"
        labels = "; labels from the class folders" if chosen == "classes" else ""
        return chosen, f"captions from each file's {source} (--captions {captions}){labels}"
    if layout != "auto":
        return layout, f"{layout} (--layout {layout}); {share}"
    if half_captioned:
        return "captions", f"captions: {share}"
    class_names = class_folder_files(root, files)[0]
    if class_names:
        return "classes", f"classes: only {share}, fewer than half of any kind; {len(class_names):,} class folders name the rest"
    if captioned:
        return "captions", f"captions: {share}, and there are no class folders"
    raise ValueError(
        f"{root} has neither caption files (.txt beside each media file; {share}) nor class sub-folders; "
        "pass --captions names to caption each file by its name (polar_bear.png -> 'polar bear'), "
        "or see docs/your-data.md for the layouts"
    )


def _describe_classes(root: Path, files: list[Path], captions: str) -> str:
    names = class_folder_files(root, files)[0]
    top = class_root(root, files)
    inside = f" inside {top.relative_to(root).as_posix()}/ (the one folder at the top)" if top != root else ""
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    one = "; one class: every caption is the same" if len(names) == 1 else ""
    deeper = [path for path in files if len(path.relative_to(top).parts) > 2 and media_modality(path)]
    if deeper:
        # Sub-folders inside a class folder: maybe the classes, maybe not; the user decides.
        example = deeper[0].relative_to(top)
        one += (f"; {len(deeper):,} media files lie in sub-folders of their class folder, labelled by the class "
                f"folder ({example.as_posix()}: {example.parts[0]})")
        if captions == "auto":
            one += "; if folder names are not classes, --captions names captions each file by its name"
    return f" ({len(names):,} classes{inside}: {shown}{one})" if names else " (no class folders)"


def list_folder(
    root: str | os.PathLike,
    *,
    layout: str = "auto",
    captions: str = "auto",
    caption_template: str | Mapping[str, str] | None = None,
) -> FolderListing:
    """List the samples of a folder, in sorted order, with the layout chosen and why.

    Layouts (``"auto"``: see :func:`choose_layout`):

    - ``"captions"``: every media file has a caption in a same-stem ``.txt``
      (``dogs/01.jpg`` + ``dogs/01.txt``) and optionally extra fields in a same-stem ``.json``.
    - ``"classes"``: one sub-folder per class (``root/golden_retriever/*.jpg``, see
      :func:`class_folder_files`); the caption is the template filled with the class name
      (underscores as spaces) and ``{"label": i, "class_name": name}`` goes to ``.json``,
      with ``i`` the index of the class in sorted order; the names in that order are the
      listing's ``class_names``.

    In both, files sharing a stem are paired by :func:`multimodal.data.writing.pairing.pair_media`:
    ``x.png`` + ``x.flac`` + ``x.txt`` is an image-audio-text sample; ``x.png`` and ``x.svg``
    are two samples.

    Args:
        captions: ``"auto"``: by the layout; ``"names"``: each file's name in words
            (:func:`caption_from_name`; ``.txt`` files are then not read);
            ``"names+folders"``: its folders, then its name.
        caption_template: one template for all (``"a photo of a {}"``) or one per modality
            (``{"image": ..., "audio": ...}``), ``{}`` standing for the class name or, with
            captions from names, the name. Defaults: ``"a photo of {}."`` / ``"the sound of {}."``
            for classes, ``"{}"`` (the name alone) for names. A sample of an image and a sound
            takes the image's.

    Hidden files and folders are left out. Files of types not read (neither media, ``.svg``,
    ``.txt`` nor ``.json``) are attached to the sample of the same name as ``ignored``, or
    listed alone, and other files no sample uses as ``unused``, so that the writer names them
    rather than let them vanish unnoticed.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory; pass the folder that holds the images/audio and captions")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if captions not in CAPTION_SOURCES:
        raise ValueError(f"captions must be one of {CAPTION_SOURCES}, got {captions!r}")
    files = visible_files(root)
    chosen, decision = choose_layout(root, files, layout, captions)
    class_captions = None
    if chosen == "classes":
        class_captions = _class_captions(root, files)
        if not class_captions and captions == "auto":
            raise ValueError(
                f"{root} has no class sub-folders (--layout classes wants one sub-folder per class); "
                "pass --captions names to caption each file by its name"
            )
        decision += _describe_classes(root, files, captions)
    default = DEFAULT_CAPTION_TEMPLATES if captions == "auto" else dict.fromkeys(MEDIA_MODALITIES, "{}")
    templates = _caption_templates(caption_template, default)
    drafts = [
        draft
        for stem, paths in _stem_groups(root, files).items()
        for draft in _group_drafts(root, stem, paths, captions, class_captions, templates)
    ]
    return FolderListing(keyed_samples(drafts), chosen, decision,
                         _class_names(class_captions) if class_captions is not None else None)


def samples_from_folder(
    root: str | os.PathLike,
    *,
    layout: str = "auto",
    captions: str = "auto",
    caption_template: str | Mapping[str, str] | None = None,
) -> list[SampleSource]:
    """The samples of :func:`list_folder`, without the layout's report."""
    return list_folder(root, layout=layout, captions=captions, caption_template=caption_template).samples


__all__ = [
    "CAPTIONED_SHARE",
    "CAPTION_EXTENSION",
    "CAPTION_SOURCES",
    "DEFAULT_CAPTION_TEMPLATES",
    "EXTRA_EXTENSION",
    "FolderListing",
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "MEDIA_EXTENSIONS",
    "READ_EXTENSIONS",
    "SampleSource",
    "UNUSED_REASONS",
    "VECTOR_EXTENSIONS",
    "caption_from_name",
    "choose_layout",
    "class_folder_files",
    "class_name_in_words",
    "class_root",
    "list_folder",
    "make_key",
    "modality_of_extension",
    "name_in_words",
    "normalize_extension",
    "samples_from_folder",
    "samples_from_manifest",
    "visible_files",
]
