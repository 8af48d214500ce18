// blkrep: the one command-line program (CONTRACT.md).
#include <cstdio>
#include <string>
#include <vector>

#include "tools/cli.h"
#include "tools/commands.h"

namespace {

constexpr const char* kUsage =
    "usage: blkrep <command> [options]\n"
    "\n"
    "commands:\n"
    "  track GUEST NAME=VOLUME... --nbd-socket PATH [--nbd-listen HOST:PORT] [--block-size SIZE]\n"
    "        [--trace FILE]               serve the volumes over NBD, tracking every write\n"
    "  trace inspect FILE [--json] [--block-size SIZE] [--records | --no-records]\n"
    "                                     what a write trace (track --trace) holds\n"
    "  journal inspect GUEST [--json]     what the journal of GUEST holds\n"
    "  journal write GUEST NAME=VOLUME --offset SIZE --length SIZE [...]\n"
    "                                     write to a volume through the tracking layer\n"
    "  receive --stdio --replica-dir DIR  receive one session on stdin/stdout\n"
    "  recovery-points GUEST --replica-dir DIR [--json]\n"
    "                                     the recovery points kept for GUEST\n"
    "  target add NAME (--exec CMD | --ssh [USER@]HOST | --connect HOST:PORT) [auth options]\n"
    "  target list [--json]               where replicas go\n"
    "  create-local-job JOBID TARGET [--schedule SPEC] [--rate MBPS] [--comment TEXT] [--disable]\n"
    "                   [--auto-resync on|off] [--resync-window HH:MM-HH:MM|any]\n"
    "  update JOBID [same options as create-local-job but --disable]\n"
    "  run [--id JOBID] [--verbose]       run due jobs, or one job now (a systemd timer runs\n"
    "                                     `blkrep run` every minute: docs/systemd/blkrep-run.timer)\n"
    "  status [--json]                    the jobs and their state\n"
    "  list [--json]                      the job definitions\n"
    "  read JOBID [--json]                one job's whole definition and state\n"
    "  enable JOBID | disable JOBID       let bare runs pick the job, or not\n"
    "  schedule-now JOBID                 the next bare run runs the job, due or not\n"
    "  delete JOBID [--keep] [--force]    delete the job and (unless --keep) its replica on the target\n"
    "  events [--json] [--since TIME]     what happened to the jobs (cycles, failures, state changes)\n"
    "  suspend JOBID | resume JOBID [--resync]\n"
    "                                     pause a job's cycles (changes keep being tracked), go on\n"
    "  resync JOBID [--now] [--at TIME]   compare every block's hash on both sides, send what differs\n"
    "  verify JOBID [--json]              compare without sending; exit 1 and the ranges that differ\n"
    "  measure [JOBID] [--json] [--since TIME]\n"
    "                                     replication figures and health (Measure-VMReplication)\n"
    "  metrics [--output FILE]            Prometheus text format (node_exporter's textfile collector)\n"
    "  test-failover GUEST --replica-dir DIR --nbd-socket PATH [--nbd-listen HOST:PORT] [--point ID]\n"
    "                [--overlay-dir DIR]  serve the replicas writable over NBD, writes discarded at exit\n"
    "  promote GUEST --replica-dir DIR [--point ID] [--json]\n"
    "                                     failover: the replicas become a tracked source on this node\n"
    "  demote GUEST --replica-dir DIR [--job JOBID] [--json]\n"
    "                                     the way back: the old source's volumes become the replica\n"
    "  bench [--size SIZE | --volume PATH] [--dirty LIST] [--write-size DIST] [--skew S] [--json] [--svg FILE]\n"
    "        [--replay TRACE] [...]       changed-block throughput benchmark on a scratch volume\n"
    "                                     (tracker overhead, full sync, incremental cycles, resync)\n"
    "  version                            print the version\n"
    "\n"
    "common options: --state-dir DIR (default $BLKREP_STATE_DIR or /var/lib/blkrep)\n";

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
    std::fputs(kUsage, args.empty() ? stderr : stdout);
    return args.empty() ? blkrep::tools::kExitUsage : blkrep::tools::kExitOk;
  }
  std::string command = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (command == "journal") return blkrep::tools::JournalCommand(rest);
  if (command == "track") return blkrep::tools::TrackCommand(rest);
  if (command == "trace") return blkrep::tools::TraceCommand(rest);
  if (command == "receive") return blkrep::tools::ReceiveCommand(rest);
  if (command == "target") return blkrep::tools::TargetCommand(rest);
  if (command == "create-local-job") return blkrep::tools::CreateLocalJobCommand(rest);
  if (command == "run") return blkrep::tools::RunCommand(rest);
  if (command == "status") return blkrep::tools::StatusCommand(rest);
  if (command == "events") return blkrep::tools::EventsCommand(rest);
  if (command == "suspend") return blkrep::tools::SuspendCommand(rest);
  if (command == "resume") return blkrep::tools::ResumeCommand(rest);
  if (command == "resync") return blkrep::tools::ResyncCommand(rest);
  if (command == "update") return blkrep::tools::UpdateCommand(rest);
  if (command == "verify") return blkrep::tools::VerifyCommand(rest);
  if (command == "promote") return blkrep::tools::PromoteCommand(rest);
  if (command == "demote") return blkrep::tools::DemoteCommand(rest);
  if (command == "recovery-points") return blkrep::tools::RecoveryPointsCommand(rest);
  if (command == "measure") return blkrep::tools::MeasureCommand(rest);
  if (command == "metrics") return blkrep::tools::MetricsCommand(rest);
  if (command == "test-failover") return blkrep::tools::TestFailoverCommand(rest);
  if (command == "list") return blkrep::tools::ListCommand(rest);
  if (command == "read") return blkrep::tools::ReadCommand(rest);
  if (command == "enable") return blkrep::tools::EnableCommand(rest);
  if (command == "disable") return blkrep::tools::DisableCommand(rest);
  if (command == "schedule-now") return blkrep::tools::ScheduleNowCommand(rest);
  if (command == "delete") return blkrep::tools::DeleteCommand(rest);
  if (command == "bench") return blkrep::tools::BenchCommand(rest);
  if (command == "version" || command == "--version") {
    std::printf("blkrep %s\n", BLKREP_VERSION);
    return blkrep::tools::kExitOk;
  }
  std::fprintf(stderr, "blkrep: error: unknown command '%s' (see blkrep help)\n", command.c_str());
  return blkrep::tools::kExitUsage;
}
