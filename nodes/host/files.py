"""Files and folders: the host's input, output and temp folders and its save conventions.

The folders a user-typed path may point into, file-name checks made before anything is written,
ComfyUI's filename-prefix convention (`save_location`, `save_json`), the inversion cache folder, and
the models/temporal_adapters folder, registered with folder_paths once, when this module is imported.
"""
import os

import comfy.cli_args
import folder_paths


def input_directory():
    return folder_paths.get_input_directory()


def output_directory():
    return folder_paths.get_output_directory()


def temp_directory():
    return folder_paths.get_temp_directory()


def allowed_roots():
    """Folders a user-typed path may point into: input (first), output and temp folders, plus
    those listed in $TEMPORAL_ADAPTER_ALLOWED_ROOTS (separated by os.pathsep)."""
    extra = [d for d in os.environ.get("TEMPORAL_ADAPTER_ALLOWED_ROOTS", "").split(os.pathsep) if d]
    return [os.path.realpath(d) for d in (input_directory(), output_directory(), temp_directory(), *extra)]


def metadata_enabled():
    """False when the host runs with --disable-metadata."""
    return not comfy.cli_args.args.disable_metadata


# Bytes a saver may add to the last part of a prefix: "_00001_", an extension, a temporary-file suffix.
NAME_RESERVE = 32
WINDOWS_REFUSED = '<>:"|?*'


def check_file_name(text, input_name="filename_prefix", directory=None, reserve=NAME_RESERVE,
                    example="TemporalAdapter/video"):
    """Raise ValueError naming `input_name` and the fix unless every part of the relative path `text`
    is a name the file system of `directory` (default: the output folder) can store, with `reserve`
    bytes to spare in the last part: not empty, no NUL or other control character (nor <>:"|?* on
    Windows), encodable in the file system's encoding, and no part longer than its name limit.
    Checked before anything is created, so a refused name leaves no file or folder behind."""
    if not text.strip():
        raise ValueError(f"{input_name}: is empty; give a name such as {example!r}.")
    for i, char in enumerate(text):
        if ord(char) < 32 or ord(char) == 127 or (os.name == "nt" and char in WINDOWS_REFUSED):
            raise ValueError(f"{input_name}: the character U+{ord(char):04X} at position {i} cannot be part of a "
                             f"file name; remove it.")
    try:
        os.fsencode(text)
    except UnicodeEncodeError as e:
        raise ValueError(f"{input_name}: the character U+{ord(text[e.start]):04X} at position {e.start} cannot be "
                         "stored by this file system; remove it.") from None
    directory = directory or output_directory()
    while not os.path.isdir(directory) and os.path.dirname(directory) != directory:
        directory = os.path.dirname(directory)  # the limit of the folder it will be made in
    try:
        limit = os.pathconf(directory, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):
        limit = 255
    parts = [p for p in os.path.normpath(text).replace("\\", "/").split("/") if p]
    for i, part in enumerate(parts):
        spare = reserve if i == len(parts) - 1 else 0
        if len(os.fsencode(part)) + spare > limit:
            raise ValueError(f"{input_name}: the name {part[:24]!r}... is {len(os.fsencode(part))} bytes long; this "
                             f"folder allows {limit - spare} here; shorten it.")


def save_location(filename_prefix, width=0, height=0, directory=None):
    """ComfyUI's prefix convention: returns (folder, filename, counter, subfolder). The prefix is
    checked first (`check_file_name`, and that it stays inside `directory`, default the output
    folder): ValueError naming filename_prefix, before any folder is made."""
    directory = directory or output_directory()
    check_file_name(filename_prefix, directory=directory)
    target = os.path.abspath(os.path.join(directory, os.path.dirname(os.path.normpath(filename_prefix))))
    if os.path.commonpath((os.path.abspath(directory), target)) != os.path.abspath(directory):
        raise ValueError(f"filename_prefix: {filename_prefix!r} leads outside the output folder; give a path inside "
                         "it, such as 'TemporalAdapter/video'.")
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        filename_prefix, directory, width, height)
    return folder, filename, counter, subfolder


def save_json(report, filename_prefix):
    """Write a JSON report under the output folder with ComfyUI's prefix convention, atomically.
    Returns the path relative to the output folder."""
    from ...adapter_core.metrics import write_json
    folder, filename, counter, subfolder = save_location(filename_prefix)
    name = f"{filename}_{counter:05}_.json"
    write_json(report, os.path.join(folder, name))
    return os.path.join(subfolder, name)


def inversion_cache_dir():
    return os.path.join(temp_directory(), "temporal_adapter", "inversions")


ADAPTER_FOLDER = "temporal_adapters"


def _register_adapter_folder():
    """models/temporal_adapters, registered with folder_paths (keeps paths added by extra_model_paths)."""
    folder_paths.add_model_folder_path(ADAPTER_FOLDER, os.path.join(folder_paths.models_dir, ADAPTER_FOLDER))
    extensions = folder_paths.folder_names_and_paths[ADAPTER_FOLDER][1]
    if isinstance(extensions, set):
        extensions.add(".safetensors")


_register_adapter_folder()


def adapter_files():
    return folder_paths.get_filename_list(ADAPTER_FOLDER)


def adapter_path(name):
    """Full path of an adapter file listed by `adapter_files` (None if it is not there)."""
    return folder_paths.get_full_path(ADAPTER_FOLDER, name)


def adapter_save_path(name):
    """Where to write adapter `name` (a plain file name ending .safetensors) in the first folder."""
    if os.path.basename(name) != name or not name.endswith(".safetensors") or name.startswith("."):
        raise ValueError(f"adapter file name must be a plain name ending in .safetensors, got {name!r}")
    folder = folder_paths.get_folder_paths(ADAPTER_FOLDER)[0]
    check_file_name(name, "filename_prefix", folder)
    return os.path.join(folder, name)
