// dws/sync.h — versions of one model in a Store: publish, pull, log, verify (docs/store.md).
//
// Version 0 is an anchor (the whole checkpoint); later versions carry a delta patch from the previous
// version, and every anchor_every-th version (or one asked for) also carries an anchor. A version's
// files are written first; it becomes visible only when its manifest ("versions/<N>/manifest.json") is
// committed with put_if_absent, so readers never see a partial version and two publishers cannot both
// commit version N.
//
// A receiver's local checkpoint carries a sidecar, "<checkpoint>.dws-version" (JSON: store, version,
// state digest, tensor digests, the files' stamps), rewritten atomically after every applied version.
// While the stamps match, the next pull trusts the digests and reads and checks only what changes. Pulls are transactional per version:
// each delta is applied in place through the crash-safe journal of apply_patch_in_place, and an anchor
// is restored into a temp copy that replaces the local checkpoint atomically; an interrupted pull leaves
// the checkpoint at some complete version (or with a journal that the next pull replays first).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "dws/auth.h"
#include "dws/patch.h"
#include "dws/status.h"
#include "dws/store.h"

namespace dws {

struct VersionFile {
  std::string key;          // object key in the store
  std::string role;         // "delta" | "anchor" (anchor files of a sharded checkpoint: one per file)
  std::string name;         // anchor: the file's name inside the checkpoint ("" for a single file)
  uint64_t size_bytes = 0;
  std::string xxh3;         // XXH3-128 of the object's bytes, 32 hex digits
  std::string sha256;       // SHA-256 of the object's bytes, 64 hex digits: listed by signed versions, else empty
};

struct VersionManifest {
  uint64_t version = 0;
  std::optional<uint64_t> base_version;  // the delta's base (version − 1); nullopt without a delta
  bool has_anchor = false;
  bool sharded = false;                   // the anchor is a sharded directory
  uint32_t writers = 1;                   // parts merged into this version (one shard per writer when > 1)
  std::string base_state_digest;          // with a delta: the state it applies to
  std::string state_digest;               // the state this version ends at
  uint64_t changes = 0;                   // delta: changed elements
  uint64_t elements = 0;                  // elements of the model
  uint64_t model_bytes = 0;               // tensor bytes of the model
  uint64_t created_unix_ms = 0;
  std::optional<uint64_t> step;           // the publisher's step id (PublishOptions::step), when given
  std::vector<VersionFile> files;

  uint64_t bytes_of(std::string_view role) const;
};

// Parses and validates a manifest (hostile bytes: keys are checked, sizes bounded). With `auth`, the
// manifest must be signed by that key and list every file's SHA-256 (E_AUTH otherwise).
Result<VersionManifest> parse_manifest(std::string_view json_text, const AuthKey* auth = nullptr);
// With `auth`, the manifest is signed (its files must carry their sha256).
std::string serialize_manifest(const VersionManifest& m, const AuthKey* auth = nullptr);

// Committed versions, ascending (a manifest present = committed).
Result<std::vector<uint64_t>> list_versions(Store& store);
Result<VersionManifest> read_manifest(Store& store, uint64_t version, const AuthKey* auth = nullptr);

struct PublishOptions {
  uint64_t anchor_every = 16;  // versions 0, N, 2N, ... carry an anchor; 0 = only version 0
  bool anchor = false;          // this version carries an anchor (and starts a new chain if it does not descend)
  // The publisher's copy of the last published state, kept to diff against; rebuilt from the store
  // when missing or not at the store's latest version. Required.
  std::string snapshot_path;
  // A delta with more than this fraction of elements changed, or with tensors removed, is taken as a
  // checkpoint that does not descend from the last version: E_BASE_MISMATCH unless `anchor`.
  double max_delta_density = 0.5;
  CreatePatchOptions patch;     // encoding, threads
  // Several writers (trainer ranks): this publisher is writer `writer_index` of `writers` and publishes
  // only its own tensors, as a single safetensors file. Each writer commits its part of the version; the
  // writer that completes the set merges the parts and commits the version, which becomes visible only
  // then. Receivers see shard "part-<I>-of-<K>.safetensors" per writer plus an index. The snapshot is
  // then a directory (the whole model). Writers publish in lockstep: a writer's part of N+1 waits for
  // version N to commit (E_EXISTS until then). A checkpoint that does not descend is E_BASE_MISMATCH.
  uint32_t writers = 1;
  uint32_t writer_index = 0;
  // The trainer's step id, recorded in the version. It makes a publish idempotent: when the latest
  // version (or, with several writers, this writer's pending part) already carries this step, nothing is
  // published and that version is reported (already_published). Rerunning a publish that was killed
  // after its commit then does not publish the same weights again as a new version. With several
  // writers, parts of one version must carry the same step (E_INVALID_ARGUMENT otherwise).
  std::optional<uint64_t> step;
  // Receivers to poke right after the commit (dws/notify.h); failures are reported, not fatal.
  std::vector<std::string> notify_urls;
  std::string notify_token;
  double notify_timeout_seconds = 2.0;
  // Authenticated versions (dws/auth.h): sign each version and list its files' SHA-256; the store's
  // earlier versions (and, with several writers, the other writers' parts) must be signed by this key
  // too. nullptr: unsigned. The caller keeps the key alive during the call.
  const AuthKey* auth = nullptr;
};

struct PublishResult {
  uint64_t version = 0;
  bool committed = true;  // several writers: false while other writers' parts are still missing
  bool already_published = false;  // `step` was already published (committed, or our part is pending)
  bool has_delta = false, has_anchor = false;
  uint64_t delta_bytes = 0, anchor_bytes = 0;
  uint64_t changes = 0, elements = 0;
  std::string state_digest;
  std::vector<std::string> notify_failures;
};

// Publishes checkpoint_path as the store's next version. E_EXISTS when another publisher committed
// that version first (nothing of ours stays visible; retry after pulling).
Result<PublishResult> publish(Store& store, const std::string& checkpoint_path, const PublishOptions& options);

// Publishes a version prepared elsewhere, without a snapshot: a trainer that tracks its own changes
// (dws/track.h, create_patch_from_changes) hands over `patch_path`, a delta from the store's latest
// version (empty: none), and/or `anchor_path`, the whole checkpoint at the version's state (empty:
// none). The delta must start at the latest version's state digest (E_BASE_MISMATCH otherwise); an
// anchor given with a delta must hash to the delta's target state (E_TARGET_MISMATCH: the tracked changes do
// not explain the checkpoint); an empty store takes only an anchor, and a version without a delta is an
// anchor that starts a new chain. `step` as in PublishOptions. Only single-writer stores.
struct PublishPreparedOptions {
  std::string patch_path;
  std::string anchor_path;
  std::optional<uint64_t> step;
  size_t threads = 0;
  const AuthKey* auth = nullptr;  // as PublishOptions::auth
};
Result<PublishResult> publish_prepared(Store& store, const PublishPreparedOptions& options);

struct PullOptions {
  std::optional<uint64_t> version;  // default: the latest
  size_t threads = 0;
  // Rescan the local checkpoint to identify its version, instead of trusting the tensor digests its
  // sidecar recorded (which pull trusts only while the files' size, inode, mtime and ctime are as
  // recorded). For when the files may have changed behind a stamp, e.g. a disk error.
  bool audit = false;
  // Called after each applied version (progress); may be empty.
  std::function<void(uint64_t version, bool from_anchor)> on_version;
  // Called with each patch (a delta, or a fold spanning versions) right after it was applied to the
  // local checkpoint itself, in order, so that a copy held elsewhere (tensors in memory) can follow in
  // O(changes) with apply_patch_to_tensors. Patches applied while restoring an anchor are not passed:
  // after a pull with used_anchor such a copy must be reloaded whole. May be empty.
  std::function<void(const Patch& patch)> on_patch;
  // Take only versions signed by this key, and check every downloaded file's SHA-256 (E_AUTH
  // otherwise; folds not signed by it are ignored). nullptr: signatures are not checked.
  const AuthKey* auth = nullptr;
};

struct PullResult {
  std::optional<uint64_t> from_version;  // the local version before the pull (nullopt: none/unknown)
  uint64_t version = 0;                  // the local version now
  bool used_anchor = false;
  bool used_fold = false;
  std::vector<uint64_t> applied;         // versions applied as deltas
  uint64_t bytes_downloaded = 0;
  std::string state_digest;
  bool rescanned = false;                // the local checkpoint was read whole to identify it
  TensorDigests tensor_digests;          // of the local checkpoint now, verified (empty if unknown)
};

// Brings local_path (a checkpoint, or a path that does not exist yet) to the requested version.
Result<PullResult> pull(Store& store, const std::string& local_path, const PullOptions& options);

class NotifyListener;

struct FollowOptions {
  double poll_seconds = 1.0;                // store polls when no poke arrives
  NotifyListener* listener = nullptr;       // optional: pokes wake the loop at once
  std::function<bool()> keep_going;         // checked before every pull; empty: forever
  std::function<void(const PullResult&)> on_pull;  // after each pull that reached a new version
  size_t threads = 0;
  bool audit = false;                       // the first pull rescans the local checkpoint (PullOptions::audit)
  // A pull that failed with E_UNAVAILABLE (the store was unreachable past its retry deadline); the loop
  // goes on, the local checkpoint stays at the last version it reached. Empty: ignored.
  std::function<void(const Status&)> on_unavailable;
  const AuthKey* auth = nullptr;            // PullOptions::auth
};

// Keeps local_path at the store's latest version: pull, then wait for a poke or the poll interval.
// Returns when keep_going says so (Ok) or on the first failed pull other than an empty store or an
// unavailable one (outages are outlived: see on_unavailable).
Status follow(Store& store, const std::string& local_path, const FollowOptions& options);

// The local checkpoint's version according to its sidecar (nullopt when there is none).
Result<std::optional<uint64_t>> local_version(const std::string& local_path);

// A folded patch A→B for receivers that lag: one patch with every element that differs between the two
// versions (changes undone on the way are not shipped). Stored under "folds/<A>-<B>/", committed by its
// manifest; pull takes it when it is cheaper than the chain.
struct FoldResult {
  uint64_t from_version = 0, to_version = 0;
  uint64_t bytes = 0, changes = 0;
  uint64_t chain_bytes = 0;  // the deltas A+1..B it replaces
};
// With `auth`, both versions must be signed by it, and so is the fold.
Result<FoldResult> fold(Store& store, uint64_t from_version, uint64_t to_version, const std::string& scratch_dir,
                        const CreatePatchOptions& options, const AuthKey* auth = nullptr);

struct GcOptions {
  uint64_t keep_last = 8;           // the newest N versions stay pullable
  std::vector<uint64_t> pinned;     // these stay pullable too
  bool dry_run = false;
};
struct GcResult {
  std::vector<uint64_t> deleted_versions;
  std::vector<uint64_t> kept_versions;
  uint64_t deleted_objects = 0, deleted_bytes = 0;
};
// Retires versions and folds no kept version needs: a kept version needs every version back to the
// newest anchor at or before it. Each retired version disappears atomically (its manifest goes first);
// orphaned files of publishers that died before committing are removed too.
Result<GcResult> gc(Store& store, const GcOptions& options);

struct VerifyReport {
  std::vector<uint64_t> versions_checked;
  std::vector<std::string> problems;  // one line per problem, naming the version and object
  bool ok() const { return problems.empty(); }
};

// Checks manifests, that every object exists with its size and hash, and that deltas chain (base =
// previous version, base digest = previous state digest). full: also rebuilds every version from its
// anchor in a scratch directory and checks the state digests by rescanning. With `auth`, every manifest
// must be signed by it and every object must match its signed SHA-256 (a problem each, not an error).
Result<VerifyReport> verify_store(Store& store, std::optional<uint64_t> version, bool full, size_t threads,
                                  const AuthKey* auth = nullptr);

}  // namespace dws
