#include "jobs/job_store.h"

#include <sqlite3.h>
#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <functional>

#include "tracker/journal_format.h"

namespace blkrep::jobs {

using core::Result;
using core::Status;

namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS targets (
  name TEXT PRIMARY KEY,
  args TEXT NOT NULL              -- arguments, one per line
);
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY,
  guest TEXT NOT NULL,
  target TEXT NOT NULL REFERENCES targets(name),
  schedule TEXT NOT NULL,
  rate_mbps REAL NOT NULL DEFAULT 0,
  comment TEXT NOT NULL DEFAULT '',
  enabled INTEGER NOT NULL DEFAULT 1,
  state TEXT NOT NULL DEFAULT 'ok',
  error TEXT NOT NULL DEFAULT '',
  fail_count INTEGER NOT NULL DEFAULT 0,
  last_sync INTEGER,
  last_try INTEGER,
  duration_s REAL NOT NULL DEFAULT 0,
  last_mode TEXT NOT NULL DEFAULT '',
  last_bytes_sent INTEGER NOT NULL DEFAULT 0,
  last_blocks_sent INTEGER NOT NULL DEFAULT 0,
  auto_resync INTEGER NOT NULL DEFAULT 1,
  resync_window TEXT NOT NULL DEFAULT '',
  resync_at INTEGER,
  run_now INTEGER NOT NULL DEFAULT 0,
  recovery_points INTEGER NOT NULL DEFAULT 0,
  UNIQUE (guest, target)
);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  time INTEGER NOT NULL,
  kind TEXT NOT NULL,
  job TEXT NOT NULL,
  guest TEXT NOT NULL,
  message TEXT NOT NULL,
  details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_time ON events (time);
)sql";

// A prepared statement, finalized on scope exit.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) { rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr); }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  bool ok() const { return rc_ == SQLITE_OK; }
  Stmt& Text(int i, const std::string& s) {
    sqlite3_bind_text(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Int(int i, std::int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Stmt& OptInt(int i, const std::optional<std::int64_t>& v) {
    if (v) sqlite3_bind_int64(stmt_, i, *v);
    else sqlite3_bind_null(stmt_, i);
    return *this;
  }
  Stmt& Real(int i, double v) {
    sqlite3_bind_double(stmt_, i, v);
    return *this;
  }
  int Step() { return sqlite3_step(stmt_); }
  std::string ColText(int i) {
    const unsigned char* t = sqlite3_column_text(stmt_, i);
    return t ? std::string(reinterpret_cast<const char*>(t)) : std::string();
  }
  std::int64_t ColInt(int i) { return sqlite3_column_int64(stmt_, i); }
  std::optional<std::int64_t> ColOptInt(int i) {
    if (sqlite3_column_type(stmt_, i) == SQLITE_NULL) return std::nullopt;
    return sqlite3_column_int64(stmt_, i);
  }
  double ColReal(int i) { return sqlite3_column_double(stmt_, i); }
  Status Error(const std::string& what) const {
    return Status::IoError("job database: " + what + ": " + sqlite3_errmsg(db_));
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

std::string JoinLines(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += s + "\n";
  return out;
}

std::vector<std::string> SplitLines(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == '\n') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  return out;
}

constexpr const char* kJobColumns =
    "id, guest, target, schedule, rate_mbps, comment, enabled, state, error, fail_count, last_sync, last_try, "
    "duration_s, last_mode, last_bytes_sent, last_blocks_sent, auto_resync, resync_window, resync_at, run_now, recovery_points";

// Columns added after the first release: added to an older database.
constexpr const char* kAddedJobColumns[][2] = {
    {"auto_resync", "INTEGER NOT NULL DEFAULT 1"},
    {"resync_window", "TEXT NOT NULL DEFAULT ''"},
    {"resync_at", "INTEGER"},
    {"run_now", "INTEGER NOT NULL DEFAULT 0"},
    {"recovery_points", "INTEGER NOT NULL DEFAULT 0"},
};

Job ReadJob(Stmt& s) {
  Job j;
  j.id = s.ColText(0);
  j.guest = s.ColText(1);
  j.target = s.ColText(2);
  j.schedule = s.ColText(3);
  j.rate_mbps = s.ColReal(4);
  j.comment = s.ColText(5);
  j.enabled = s.ColInt(6) != 0;
  j.state = s.ColText(7);
  j.error = s.ColText(8);
  j.fail_count = static_cast<std::uint64_t>(s.ColInt(9));
  j.last_sync = s.ColOptInt(10);
  j.last_try = s.ColOptInt(11);
  j.duration_s = s.ColReal(12);
  j.last_mode = s.ColText(13);
  j.last_bytes_sent = static_cast<std::uint64_t>(s.ColInt(14));
  j.last_blocks_sent = static_cast<std::uint64_t>(s.ColInt(15));
  j.auto_resync = s.ColInt(16) != 0;
  j.resync_window = s.ColText(17);
  j.resync_at = s.ColOptInt(18);
  j.run_now = s.ColInt(19) != 0;
  j.recovery_points = static_cast<std::uint32_t>(s.ColInt(20));
  return j;
}

}  // namespace

Status ValidateJobId(const std::string& id, std::string* guest) {
  std::size_t dash = id.rfind('-');
  if (dash == std::string::npos || dash == 0 || dash + 1 == id.size()) {
    return Status::InvalidArgument("job id '" + id + "' is not GUEST-N");
  }
  for (std::size_t i = dash + 1; i < id.size(); ++i) {
    if (id[i] < '0' || id[i] > '9' || i - dash > 9) {
      return Status::InvalidArgument("job id '" + id + "' is not GUEST-N (N a number)");
    }
  }
  std::string g = id.substr(0, dash);
  if (!tracker::journal_format::IsValidName(g) || !tracker::journal_format::IsValidName(id)) {
    return Status::InvalidArgument("job id '" + id + "': invalid guest name '" + g + "'");
  }
  if (guest) *guest = g;
  return Status::Ok();
}

Result<std::unique_ptr<JobStore>> JobStore::Open(const std::string& state_dir) {
  if (::mkdir(state_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return core::ErrnoStatus(errno, "create state directory " + state_dir);
  }
  std::string path = state_dir + "/blkrep.db";
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    Status s = Status::IoError("open job database " + path + ": " + (db ? sqlite3_errmsg(db) : "out of memory"));
    sqlite3_close(db);
    return s;
  }
  sqlite3_busy_timeout(db, 10000);
  std::unique_ptr<JobStore> store(new JobStore(db));
  BLKREP_RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON;"));
  BLKREP_RETURN_IF_ERROR(store->Exec(kSchema));
  // An older database gains the columns once; two commands opening it at
  // the same time serialize on the write lock and the second finds them.
  auto missing = [&](const char* name) {
    Stmt probe(db, (std::string("SELECT ") + name + " FROM jobs LIMIT 0").c_str());
    return !probe.ok();
  };
  if (missing(kAddedJobColumns[0][0]) || missing(kAddedJobColumns[2][0])) {
    BLKREP_RETURN_IF_ERROR(store->Exec("BEGIN IMMEDIATE"));
    for (const auto& [name, type] : kAddedJobColumns) {
      if (!missing(name)) continue;
      Status added = store->Exec(std::string("ALTER TABLE jobs ADD COLUMN ") + name + " " + type);
      if (!added.ok()) {
        (void)store->Exec("ROLLBACK");
        return added;
      }
    }
    BLKREP_RETURN_IF_ERROR(store->Exec("COMMIT"));
  }
  return store;
}

JobStore::~JobStore() { sqlite3_close(db_); }

Status JobStore::Exec(const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    Status s = Status::IoError(std::string("job database: ") + (err ? err : "error"));
    sqlite3_free(err);
    return s;
  }
  return Status::Ok();
}

Status JobStore::AddTarget(const Target& target) {
  Stmt s(db_, "INSERT INTO targets (name, args) VALUES (?, ?)");
  if (!s.ok()) return s.Error("prepare");
  s.Text(1, target.name).Text(2, JoinLines(target.args));
  int rc = s.Step();
  if (rc == SQLITE_CONSTRAINT) return Status::InvalidArgument("target " + target.name + " already exists");
  if (rc != SQLITE_DONE) return s.Error("add target " + target.name);
  return Status::Ok();
}

Result<Target> JobStore::GetTarget(const std::string& name) {
  Stmt s(db_, "SELECT name, args FROM targets WHERE name = ?");
  if (!s.ok()) return s.Error("prepare");
  s.Text(1, name);
  int rc = s.Step();
  if (rc == SQLITE_DONE) return Status::NotFound("no target named " + name);
  if (rc != SQLITE_ROW) return s.Error("read target " + name);
  return Target{s.ColText(0), SplitLines(s.ColText(1))};
}

Result<std::vector<Target>> JobStore::ListTargets() {
  Stmt s(db_, "SELECT name, args FROM targets ORDER BY name");
  if (!s.ok()) return s.Error("prepare");
  std::vector<Target> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) out.push_back(Target{s.ColText(0), SplitLines(s.ColText(1))});
  if (rc != SQLITE_DONE) return s.Error("list targets");
  return out;
}

Status JobStore::CreateJob(const Job& job) {
  BLKREP_RETURN_IF_ERROR(GetTarget(job.target).status().WithContext("job " + job.id));
  Stmt s(db_,
         "INSERT INTO jobs (id, guest, target, schedule, rate_mbps, comment, enabled, auto_resync, resync_window, "
         "recovery_points) VALUES (?,?,?,?,?,?,?,?,?,?)");
  if (!s.ok()) return s.Error("prepare");
  s.Text(1, job.id).Text(2, job.guest).Text(3, job.target).Text(4, job.schedule).Real(5, job.rate_mbps);
  s.Text(6, job.comment).Int(7, job.enabled ? 1 : 0).Int(8, job.auto_resync ? 1 : 0).Text(9, job.resync_window);
  s.Int(10, job.recovery_points);
  int rc = s.Step();
  if (rc == SQLITE_CONSTRAINT) {
    return Status::InvalidArgument("job " + job.id + " exists, or guest " + job.guest +
                                   " already has a job to target " + job.target);
  }
  if (rc != SQLITE_DONE) return s.Error("create job " + job.id);
  return Status::Ok();
}

Result<Job> JobStore::GetJob(const std::string& id) {
  std::string sql = std::string("SELECT ") + kJobColumns + " FROM jobs WHERE id = ?";
  Stmt s(db_, sql.c_str());
  if (!s.ok()) return s.Error("prepare");
  s.Text(1, id);
  int rc = s.Step();
  if (rc == SQLITE_DONE) return Status::NotFound("no job " + id);
  if (rc != SQLITE_ROW) return s.Error("read job " + id);
  return ReadJob(s);
}

Result<std::vector<Job>> JobStore::ListJobs() {
  std::string sql = std::string("SELECT ") + kJobColumns + " FROM jobs ORDER BY guest, id";
  Stmt s(db_, sql.c_str());
  if (!s.ok()) return s.Error("prepare");
  std::vector<Job> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) out.push_back(ReadJob(s));
  if (rc != SQLITE_DONE) return s.Error("list jobs");
  return out;
}

Status JobStore::SaveDefinition(const Job& j) {
  Stmt s(db_,
         "UPDATE jobs SET schedule=?, rate_mbps=?, comment=?, enabled=?, auto_resync=?, resync_window=?, "
         "recovery_points=? WHERE id=?");
  if (!s.ok()) return s.Error("prepare");
  s.Text(1, j.schedule).Real(2, j.rate_mbps).Text(3, j.comment).Int(4, j.enabled ? 1 : 0);
  s.Int(5, j.auto_resync ? 1 : 0).Text(6, j.resync_window).Int(7, j.recovery_points).Text(8, j.id);
  if (s.Step() != SQLITE_DONE) return s.Error("save job " + j.id);
  if (sqlite3_changes(db_) != 1) return Status::NotFound("no job " + j.id);
  return Status::Ok();
}

Status JobStore::SaveJob(const Job& j) {
  Stmt s(db_,
         "UPDATE jobs SET schedule=?, rate_mbps=?, comment=?, enabled=?, state=?, error=?, fail_count=?, "
         "last_sync=?, last_try=?, duration_s=?, last_mode=?, last_bytes_sent=?, last_blocks_sent=?, auto_resync=?, "
         "resync_window=?, resync_at=?, run_now=?, recovery_points=? WHERE id=?");
  if (!s.ok()) return s.Error("prepare");
  s.Text(1, j.schedule).Real(2, j.rate_mbps).Text(3, j.comment).Int(4, j.enabled ? 1 : 0).Text(5, j.state);
  s.Text(6, j.error).Int(7, static_cast<std::int64_t>(j.fail_count)).OptInt(8, j.last_sync).OptInt(9, j.last_try);
  s.Real(10, j.duration_s).Text(11, j.last_mode).Int(12, static_cast<std::int64_t>(j.last_bytes_sent));
  s.Int(13, static_cast<std::int64_t>(j.last_blocks_sent)).Int(14, j.auto_resync ? 1 : 0).Text(15, j.resync_window);
  s.OptInt(16, j.resync_at).Int(17, j.run_now ? 1 : 0).Int(18, j.recovery_points).Text(19, j.id);
  if (s.Step() != SQLITE_DONE) return s.Error("save job " + j.id);
  if (sqlite3_changes(db_) != 1) return Status::NotFound("no job " + j.id);
  return Status::Ok();
}

Status JobStore::SaveRun(const Job& j) {
  Stmt s(db_,
         "UPDATE jobs SET state=?, error=?, fail_count=?, last_sync=?, last_try=?, duration_s=?, last_mode=?, "
         "last_bytes_sent=?, last_blocks_sent=?, run_now=?, resync_at=? WHERE id=?");
  if (!s.ok()) return s.Error("prepare");
  s.Text(1, j.state).Text(2, j.error).Int(3, static_cast<std::int64_t>(j.fail_count)).OptInt(4, j.last_sync);
  s.OptInt(5, j.last_try).Real(6, j.duration_s).Text(7, j.last_mode);
  s.Int(8, static_cast<std::int64_t>(j.last_bytes_sent)).Int(9, static_cast<std::int64_t>(j.last_blocks_sent));
  s.Int(10, j.run_now ? 1 : 0).OptInt(11, j.resync_at).Text(12, j.id);
  if (s.Step() != SQLITE_DONE) return s.Error("save job " + j.id);
  if (sqlite3_changes(db_) != 1) return Status::NotFound("no job " + j.id);
  return Status::Ok();
}

namespace {

// UPDATE jobs SET <column> = <bound as 1> WHERE id = <bound as 2>.
Status SetColumn(sqlite3* db, const char* sql, const std::string& id, const std::function<void(Stmt&)>& bind) {
  Stmt s(db, sql);
  if (!s.ok()) return s.Error("prepare");
  bind(s);
  s.Text(2, id);
  if (s.Step() != SQLITE_DONE) return s.Error("save job " + id);
  if (sqlite3_changes(db) != 1) return Status::NotFound("no job " + id);
  return Status::Ok();
}

}  // namespace

Status JobStore::SetEnabled(const std::string& id, bool enabled) {
  return SetColumn(db_, "UPDATE jobs SET enabled=? WHERE id=?", id, [&](Stmt& s) { s.Int(1, enabled ? 1 : 0); });
}

Status JobStore::SetRunNow(const std::string& id, bool run_now) {
  return SetColumn(db_, "UPDATE jobs SET run_now=? WHERE id=?", id, [&](Stmt& s) { s.Int(1, run_now ? 1 : 0); });
}

Status JobStore::SetState(const std::string& id, const std::string& state) {
  return SetColumn(db_, "UPDATE jobs SET state=? WHERE id=?", id, [&](Stmt& s) { s.Text(1, state); });
}

Status JobStore::InTransaction(const std::function<Status()>& body) {
  BLKREP_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  Status done = body();
  if (!done.ok()) {
    (void)Exec("ROLLBACK");
    return done;
  }
  Status committed = Exec("COMMIT");
  if (!committed.ok()) (void)Exec("ROLLBACK");
  return committed;
}

Status JobStore::DeleteJob(const std::string& id) {
  Stmt s(db_, "DELETE FROM jobs WHERE id = ?");
  if (!s.ok()) return s.Error("prepare");
  s.Text(1, id);
  if (s.Step() != SQLITE_DONE) return s.Error("delete job " + id);
  if (sqlite3_changes(db_) != 1) return Status::NotFound("no job " + id);
  return Status::Ok();
}

Status JobStore::AddEvent(Event e) {
  if (e.time == 0) {
    e.time = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                 .count();
  }
  if (e.details.empty()) e.details = "{}";
  Stmt s(db_, "INSERT INTO events (time, kind, job, guest, message, details) VALUES (?,?,?,?,?,?)");
  if (!s.ok()) return s.Error("prepare");
  s.Int(1, e.time).Text(2, e.kind).Text(3, e.job).Text(4, e.guest).Text(5, e.message).Text(6, e.details);
  if (s.Step() != SQLITE_DONE) return s.Error("add event");
  return Status::Ok();
}

Result<std::vector<Event>> JobStore::ListEvents(std::int64_t since) {
  Stmt s(db_, "SELECT id, time, kind, job, guest, message, details FROM events WHERE time >= ? ORDER BY id");
  if (!s.ok()) return s.Error("prepare");
  s.Int(1, since);
  std::vector<Event> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) {
    out.push_back(Event{s.ColInt(0), s.ColInt(1), s.ColText(2), s.ColText(3), s.ColText(4), s.ColText(5),
                        s.ColText(6)});
  }
  if (rc != SQLITE_DONE) return s.Error("list events");
  return out;
}

}  // namespace blkrep::jobs
