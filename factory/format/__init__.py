"""The data contract shared by `factory` (writer) and `trainers` (reader).

Everything a consumer needs to read a dataset lives in this package and imports nothing
else of `factory`. This file only gathers the rooms' names (``fmt.X``); each room owns its part:

* `errors`: the error root `FactoryError` and `FormatError`, `one_line` (what a CLI prints for one);
* `commands`: `ErrorGroup`, the one error wrapper of the `factory` and `trainers` command lines;
* `names`: format versions, file and tar member names, index columns, sample keys, dataset and view ids;
* `paths`: remote URLs, shard paths kept inside the dataset, joins, a view's parent URL;
* `store`: fsspec access (`get_fs`, `read_bytes`), reachability, one-line storage errors;
* `schema`: every manifest, view and maps field, the JSON limits (`read_json`), cross-field problems;
* `views`: a view's accepted rows; `resolve`: opening a dataset or view (`open_dataset`);
* `index`: the compacted index of format version 3 (parts of whole shards, footers hashed, page checksums);
* `shardtable`: the shard entries of format version 4 as a Parquet table beside the manifest (`ShardTable`);
* `tar`: the reading room for tar shards (every reader of samples reads through it); `records`: the tar
  records a writer makes; `hashing`: the streamed sha256 check; `lock`: the one-writer locks.

The prose version of this contract is docs/format.md; bump FORMAT_VERSION on
any incompatible change.
"""

from factory.format.commands import ErrorGroup  # noqa: F401
from factory.format.errors import (  # noqa: F401
    FactoryError,
    FormatError,
    one_line,
)
from factory.format.hashing import (  # noqa: F401
    HashingReader,
)
from factory.format.index import (  # noqa: F401
    KEY_BUCKET,
    PARTS_VERSION,
    has_parts,
    index_parts,
    key_buckets,
    open_part,
    part_name,
    read_index_column,
    read_row_groups,
    read_shards_index,
)
from factory.format.lock import (  # noqa: F401
    FolderBusy,
    FolderLock,
    StoreLock,
    pid_alive,
)
from factory.format.names import (  # noqa: F401
    CARD,
    DATASET_KIND,
    DONE_DIR,
    EXT_IMAGE,
    EXT_LATENT,
    EXT_MASK,
    EXT_META,
    EXT_RAW_MASK,
    EXT_TEACHER,
    FORMAT_VERSION,
    HIST_BINS,
    IMAGE_CODECS,
    IMAGE_FORMATS,
    INDEX_COLUMNS,
    INDEX_DIR,
    LATENTS,
    LOCK,
    MANIFEST,
    MAPS_KIND,
    MAPS_MANIFEST,
    MAPS_PART_DIR,
    MASK_RULES,
    MAX_IMAGE_PIXELS,
    MAX_MEMBER_BYTES,
    OFFSET_COLUMNS,
    READ_VERSIONS,
    SHARD_DIR,
    SHARD_TABLE,
    SHARD_TABLE_SECTION,
    SPEC,
    TAR_MTIME,
    TEACHER_COLUMNS,
    TEACHER_FG_MIN,
    VIEW_KIND,
    canonical_json,
    dataset_id,
    dataset_id_of_columns,
    done_name,
    index_name,
    key_row,
    maps_part_name,
    sample_key,
    sha256_bytes,
    shard_name,
    view_id,
)
from factory.format.paths import (  # noqa: F401
    check_relative_path,
    is_remote_url,
    join,
    manifest_url,
    parent_url_for,
)
from factory.format.records import (  # noqa: F401
    tar_bytes,
    tar_join,
    tar_records,
)
from factory.format.resolve import (  # noqa: F401
    Resolved,
    open_dataset,
    parent_ids,
)
from factory.format.schema import (  # noqa: F401
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    MAX_RESOLUTION,
    check_manifest,
    check_manifest_fields,
    check_shard_fields,
    check_version,
    has_offsets,
    loads_json,
    manifest_problems,
    platform_record_id,
    read_json,
    validate_manifest,
    validate_maps,
    validate_view,
)
from factory.format.shardtable import (  # noqa: F401
    TABLE_VERSION,
    ShardTable,
    columns_of,
    has_table,
    read_shard_table,
    shard_ids,
    stored_manifest,
    table_bytes,
    value_counts,
    write_manifest,
)
from factory.format.store import (  # noqa: F401
    atomic_write,
    check_store,
    get_fs,
    is_local,
    read_bytes,
    silence_orphaned_tasks,
    storage_error,
    user_error,
)
from factory.format.tar import (  # noqa: F401
    MAX_SAMPLE_BYTES,
    SampleMembers,
    ShardRef,
    check_key,
    check_member,
    check_member_size,
    hash_shard,
    image_member,
    member_exts,
    member_ranges,
    open_image_checked,
    open_shard,
    range_members,
    read_errors,
    read_range,
    read_samples_whole,
    read_whole,
    record_members,
    safe_tar_members,
    sample_members,
    shard_entry,
    shard_ref,
    shard_samples,
    split_member,
    stream_members,
)
from factory.format.views import (  # noqa: F401
    AcceptedRows,
    accepted_sha256,
    check_accepted,
    decode_many,
    decode_rows,
    encode_accepted,
    encode_rows,
    mark_many,
    plain_forms,
    unpack_many,
)
