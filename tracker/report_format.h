// How `blkrep journal inspect` prints a guest's journals, as JSON
// (CONTRACT.md's fields) or as text. Shared by the file reader and the
// running tracker's control socket, so both answer alike.
#pragma once

#include <string>
#include <vector>

#include "tracker/journal.h"

namespace blkrep::tracker {

struct GuestReport {
  std::string guest;
  std::vector<JournalReport> volumes;
};

std::string GuestReportJson(const GuestReport& report);
std::string GuestReportText(const GuestReport& report);

}  // namespace blkrep::tracker
