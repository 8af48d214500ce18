// Entry points of blkrep's subcommands. Each takes the arguments after its
// own name and returns the process exit status (CONTRACT.md).
#pragma once

#include <string>
#include <vector>

namespace blkrep::tools {

int JournalCommand(const std::vector<std::string>& argv);
int TrackCommand(const std::vector<std::string>& argv);
int TraceCommand(const std::vector<std::string>& argv);
int ReceiveCommand(const std::vector<std::string>& argv);
int TargetCommand(const std::vector<std::string>& argv);
int CreateLocalJobCommand(const std::vector<std::string>& argv);
int RunCommand(const std::vector<std::string>& argv);
int StatusCommand(const std::vector<std::string>& argv);
int EventsCommand(const std::vector<std::string>& argv);
int SuspendCommand(const std::vector<std::string>& argv);
int ResumeCommand(const std::vector<std::string>& argv);
int ResyncCommand(const std::vector<std::string>& argv);
int UpdateCommand(const std::vector<std::string>& argv);
int VerifyCommand(const std::vector<std::string>& argv);
int PromoteCommand(const std::vector<std::string>& argv);
int DemoteCommand(const std::vector<std::string>& argv);
int RecoveryPointsCommand(const std::vector<std::string>& argv);
int MeasureCommand(const std::vector<std::string>& argv);
int MetricsCommand(const std::vector<std::string>& argv);
int TestFailoverCommand(const std::vector<std::string>& argv);
int ListCommand(const std::vector<std::string>& argv);
int ReadCommand(const std::vector<std::string>& argv);
int EnableCommand(const std::vector<std::string>& argv);
int DisableCommand(const std::vector<std::string>& argv);
int ScheduleNowCommand(const std::vector<std::string>& argv);
int DeleteCommand(const std::vector<std::string>& argv);
int BenchCommand(const std::vector<std::string>& argv);

}  // namespace blkrep::tools
