// Tests of jobs/calendar_event.h: Proxmox's calendar-event examples as test
// vectors, every named schedule, the daylight-saving rule on both sides of
// the 2026 changes in Europe/Vienna and America/New_York, rejected specs and
// the canonical text.
//
// Expected instants are written as local wall-clock time with the UTC offset
// in force ("2026-03-29 03:00:00 +0200"), which names one instant exactly and
// shows the daylight-saving rule at a glance. They were worked out
// independently of this code: a minute-by-minute scan of local time with
// Python's zoneinfo against each example's meaning as Proxmox's table words it.
#include "jobs/calendar_event.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace blkrep::jobs {
namespace {

// Sets TZ (and tzset) for one test; puts the old value back.
class ScopedTimeZone {
 public:
  explicit ScopedTimeZone(const char* zone) {
    if (const char* old = std::getenv("TZ")) old_ = old;
    setenv("TZ", zone, 1);
    tzset();
  }
  ~ScopedTimeZone() {
    if (old_) {
      setenv("TZ", old_->c_str(), 1);
    } else {
      unsetenv("TZ");
    }
    tzset();
  }
  ScopedTimeZone(const ScopedTimeZone&) = delete;
  ScopedTimeZone& operator=(const ScopedTimeZone&) = delete;

 private:
  std::optional<std::string> old_;
};

// Whether the system's time-zone database has `zone` ($TZDIR, else the
// standard location of Debian's tzdata).
bool HaveZone(const std::string& zone) {
  const char* dir = std::getenv("TZDIR");
  const std::string base = dir != nullptr ? dir : "/usr/share/zoneinfo";
  return access((base + "/" + zone).c_str(), R_OK) == 0;
}

#define SKIP_WITHOUT_ZONE(zone)                                                              \
  do {                                                                                       \
    if (!HaveZone(zone)) GTEST_SKIP() << "time zone " << (zone) << " missing (install tzdata)"; \
  } while (0)

// "YYYY-MM-DD HH:MM:SS +hhmm" of `instant` in the process's time zone.
std::string Local(std::int64_t instant) {
  const std::time_t t = static_cast<std::time_t>(instant);
  std::tm tm{};
  localtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S %z", &tm);
  return buf;
}

// Epoch seconds of "YYYY-MM-DDTHH:MM:SSZ".
std::int64_t Utc(const char* text) {
  std::tm tm{};
  const char* end = strptime(text, "%Y-%m-%dT%H:%M:%SZ", &tm);
  EXPECT_TRUE(end != nullptr && *end == '\0') << text;
  return timegm(&tm);
}

CalendarEvent MustParse(const std::string& spec) {
  auto event = CalendarEvent::Parse(spec);
  EXPECT_TRUE(event.ok()) << spec << ": " << event.status().message();
  if (!event.ok()) return CalendarEvent::Parse("daily").value();
  return std::move(event).value();
}

// The next `n` instants after `start`, as Local() text; stops at none.
std::vector<std::string> NextLocal(const CalendarEvent& event, std::int64_t start, int n) {
  std::vector<std::string> out;
  std::int64_t t = start;
  for (int i = 0; i < n; ++i) {
    std::optional<std::int64_t> next = event.Next(t);
    if (!next) break;
    out.push_back(Local(*next));
    t = *next;
  }
  return out;
}

std::vector<std::string> NextLocal(const std::string& spec, std::int64_t start, int n) {
  return NextLocal(MustParse(spec), start, n);
}

std::vector<std::int64_t> NextInstants(const CalendarEvent& event, std::int64_t start, int n) {
  std::vector<std::int64_t> out;
  std::int64_t t = start;
  for (int i = 0; i < n; ++i) {
    std::optional<std::int64_t> next = event.Next(t);
    if (!next) break;
    out.push_back(*next);
    t = *next;
  }
  return out;
}

// ---- Proxmox's "Schedule Examples" table -----------------------------------

struct DocExample {
  const char* spec;
  const char* alternative;  // the table's "Alternative" column, or nullptr
  const char* normalized;
  std::vector<std::string> utc;     // next four after kDocStart, TZ=UTC
  std::vector<std::string> vienna;  // the same in TZ=Europe/Vienna
};

constexpr const char* kDocStart = "2026-05-13T11:47:23Z";  // a Wednesday

const std::vector<DocExample>& DocExamples() {
  static const std::vector<DocExample> examples = {
      {"mon,tue,wed,thu,fri", "mon..fri", "Mon..Fri *-*-* 00:00:00",
       {"2026-05-14 00:00:00 +0000", "2026-05-15 00:00:00 +0000", "2026-05-18 00:00:00 +0000",
        "2026-05-19 00:00:00 +0000"},
       {"2026-05-14 00:00:00 +0200", "2026-05-15 00:00:00 +0200", "2026-05-18 00:00:00 +0200",
        "2026-05-19 00:00:00 +0200"}},
      {"sat,sun", "sat..sun", "Sat,Sun *-*-* 00:00:00",
       {"2026-05-16 00:00:00 +0000", "2026-05-17 00:00:00 +0000", "2026-05-23 00:00:00 +0000",
        "2026-05-24 00:00:00 +0000"},
       {"2026-05-16 00:00:00 +0200", "2026-05-17 00:00:00 +0200", "2026-05-23 00:00:00 +0200",
        "2026-05-24 00:00:00 +0200"}},
      {"mon,wed,fri", nullptr, "Mon,Wed,Fri *-*-* 00:00:00",
       {"2026-05-15 00:00:00 +0000", "2026-05-18 00:00:00 +0000", "2026-05-20 00:00:00 +0000",
        "2026-05-22 00:00:00 +0000"},
       {"2026-05-15 00:00:00 +0200", "2026-05-18 00:00:00 +0200", "2026-05-20 00:00:00 +0200",
        "2026-05-22 00:00:00 +0200"}},
      {"12:05", "12:05", "*-*-* 12:05:00",
       {"2026-05-13 12:05:00 +0000", "2026-05-14 12:05:00 +0000", "2026-05-15 12:05:00 +0000",
        "2026-05-16 12:05:00 +0000"},
       {"2026-05-14 12:05:00 +0200", "2026-05-15 12:05:00 +0200", "2026-05-16 12:05:00 +0200",
        "2026-05-17 12:05:00 +0200"}},
      {"*/5", "0/5", "*-*-* *:00/5:00",
       {"2026-05-13 11:50:00 +0000", "2026-05-13 11:55:00 +0000", "2026-05-13 12:00:00 +0000",
        "2026-05-13 12:05:00 +0000"},
       {"2026-05-13 13:50:00 +0200", "2026-05-13 13:55:00 +0200", "2026-05-13 14:00:00 +0200",
        "2026-05-13 14:05:00 +0200"}},
      {"mon..wed 30/10", "mon,tue,wed 30/10", "Mon..Wed *-*-* *:30,40,50:00",
       {"2026-05-13 11:50:00 +0000", "2026-05-13 12:30:00 +0000", "2026-05-13 12:40:00 +0000",
        "2026-05-13 12:50:00 +0000"},
       {"2026-05-13 13:50:00 +0200", "2026-05-13 14:30:00 +0200", "2026-05-13 14:40:00 +0200",
        "2026-05-13 14:50:00 +0200"}},
      {"mon..fri 8..17,22:0/15", nullptr, "Mon..Fri *-*-* 08..17,22:00,15,30,45:00",
       {"2026-05-13 12:00:00 +0000", "2026-05-13 12:15:00 +0000", "2026-05-13 12:30:00 +0000",
        "2026-05-13 12:45:00 +0000"},
       {"2026-05-13 14:00:00 +0200", "2026-05-13 14:15:00 +0200", "2026-05-13 14:30:00 +0200",
        "2026-05-13 14:45:00 +0200"}},
      {"fri 12..13:5/20", "fri 12,13:5/20", "Fri *-*-* 12,13:05,25,45:00",
       {"2026-05-15 12:05:00 +0000", "2026-05-15 12:25:00 +0000", "2026-05-15 12:45:00 +0000",
        "2026-05-15 13:05:00 +0000"},
       {"2026-05-15 12:05:00 +0200", "2026-05-15 12:25:00 +0200", "2026-05-15 12:45:00 +0200",
        "2026-05-15 13:05:00 +0200"}},
      {"12,14,16,18,20,22:5", "12/2:5", "*-*-* 12/2:05:00",
       {"2026-05-13 12:05:00 +0000", "2026-05-13 14:05:00 +0000", "2026-05-13 16:05:00 +0000",
        "2026-05-13 18:05:00 +0000"},
       {"2026-05-13 14:05:00 +0200", "2026-05-13 16:05:00 +0200", "2026-05-13 18:05:00 +0200",
        "2026-05-13 20:05:00 +0200"}},
      {"*", "*/1", "*-*-* *:*:00",
       {"2026-05-13 11:48:00 +0000", "2026-05-13 11:49:00 +0000", "2026-05-13 11:50:00 +0000",
        "2026-05-13 11:51:00 +0000"},
       {"2026-05-13 13:48:00 +0200", "2026-05-13 13:49:00 +0200", "2026-05-13 13:50:00 +0200",
        "2026-05-13 13:51:00 +0200"}},
      {"*-05", nullptr, "*-*-05 00:00:00",
       {"2026-06-05 00:00:00 +0000", "2026-07-05 00:00:00 +0000", "2026-08-05 00:00:00 +0000",
        "2026-09-05 00:00:00 +0000"},
       {"2026-06-05 00:00:00 +0200", "2026-07-05 00:00:00 +0200", "2026-08-05 00:00:00 +0200",
        "2026-09-05 00:00:00 +0200"}},
      {"Sat *-1..7 15:00", nullptr, "Sat *-*-01..07 15:00:00",
       {"2026-06-06 15:00:00 +0000", "2026-07-04 15:00:00 +0000", "2026-08-01 15:00:00 +0000",
        "2026-09-05 15:00:00 +0000"},
       {"2026-06-06 15:00:00 +0200", "2026-07-04 15:00:00 +0200", "2026-08-01 15:00:00 +0200",
        "2026-09-05 15:00:00 +0200"}},
  };
  return examples;
}

TEST(CalendarEventDocExamples, NextInstantsInUtc) {
  ScopedTimeZone tz("UTC");
  for (const DocExample& example : DocExamples()) {
    EXPECT_EQ(NextLocal(example.spec, Utc(kDocStart), 4), example.utc) << example.spec;
  }
}

TEST(CalendarEventDocExamples, NextInstantsInVienna) {
  SKIP_WITHOUT_ZONE("Europe/Vienna");
  ScopedTimeZone tz("Europe/Vienna");
  for (const DocExample& example : DocExamples()) {
    EXPECT_EQ(NextLocal(example.spec, Utc(kDocStart), 4), example.vienna) << example.spec;
  }
}

TEST(CalendarEventDocExamples, AlternativeFormMeansTheSame) {
  SKIP_WITHOUT_ZONE("Europe/Vienna");
  ScopedTimeZone tz("Europe/Vienna");
  for (const DocExample& example : DocExamples()) {
    if (example.alternative == nullptr) continue;
    const CalendarEvent a = MustParse(example.spec);
    const CalendarEvent b = MustParse(example.alternative);
    EXPECT_EQ(a, b) << example.spec << " vs " << example.alternative;
    EXPECT_EQ(b.Normalized(), example.normalized) << example.alternative;
    EXPECT_EQ(NextInstants(a, Utc(kDocStart), 50), NextInstants(b, Utc(kDocStart), 50)) << example.spec;
  }
}

TEST(CalendarEventDocExamples, NormalizedText) {
  for (const DocExample& example : DocExamples()) {
    EXPECT_EQ(MustParse(example.spec).Normalized(), example.normalized) << example.spec;
  }
}

TEST(CalendarEventDocExamples, FixedDateRunsOnceThenNever) {
  SKIP_WITHOUT_ZONE("Europe/Vienna");
  ScopedTimeZone tz("Europe/Vienna");
  const CalendarEvent event = MustParse("2015-10-21");
  EXPECT_EQ(event.Normalized(), "2015-10-21 00:00:00");
  EXPECT_EQ(NextLocal(event, Utc("2015-01-01T00:00:00Z"), 3),
            (std::vector<std::string>{"2015-10-21 00:00:00 +0200"}));
  EXPECT_EQ(event.Next(Utc(kDocStart)), std::nullopt);
}

// ---- Named schedules ---------------------------------------------------------

TEST(CalendarEventNames, EveryNameMeansItsSystemdSpec) {
  ScopedTimeZone tz("UTC");
  const std::int64_t start = Utc("2026-05-13T11:47:23Z");
  struct Case {
    const char* name;
    const char* normalized;
    std::vector<std::string> next;
  };
  const std::vector<Case> cases = {
      {"minutely", "*-*-* *:*:00", {"2026-05-13 11:48:00 +0000", "2026-05-13 11:49:00 +0000"}},
      {"hourly", "*-*-* *:00:00", {"2026-05-13 12:00:00 +0000", "2026-05-13 13:00:00 +0000"}},
      {"daily", "*-*-* 00:00:00", {"2026-05-14 00:00:00 +0000", "2026-05-15 00:00:00 +0000"}},
      {"weekly", "Mon *-*-* 00:00:00", {"2026-05-18 00:00:00 +0000", "2026-05-25 00:00:00 +0000"}},
      {"monthly", "*-*-01 00:00:00", {"2026-06-01 00:00:00 +0000", "2026-07-01 00:00:00 +0000"}},
      {"yearly", "*-01-01 00:00:00", {"2027-01-01 00:00:00 +0000", "2028-01-01 00:00:00 +0000"}},
      {"annually", "*-01-01 00:00:00", {"2027-01-01 00:00:00 +0000", "2028-01-01 00:00:00 +0000"}},
      {"quarterly", "*-01,04,07,10-01 00:00:00",
       {"2026-07-01 00:00:00 +0000", "2026-10-01 00:00:00 +0000", "2027-01-01 00:00:00 +0000",
        "2027-04-01 00:00:00 +0000"}},
      {"semiannually", "*-01,07-01 00:00:00",
       {"2026-07-01 00:00:00 +0000", "2027-01-01 00:00:00 +0000", "2027-07-01 00:00:00 +0000"}},
      {"semi-annually", "*-01,07-01 00:00:00",
       {"2026-07-01 00:00:00 +0000", "2027-01-01 00:00:00 +0000", "2027-07-01 00:00:00 +0000"}},
  };
  for (const Case& c : cases) {
    const CalendarEvent event = MustParse(c.name);
    EXPECT_EQ(event.Normalized(), c.normalized) << c.name;
    EXPECT_EQ(NextLocal(event, start, static_cast<int>(c.next.size())), c.next) << c.name;
  }
  EXPECT_EQ(MustParse("DAILY"), MustParse("daily"));
  EXPECT_EQ(MustParse("  hourly\t"), MustParse("hourly"));
}

// ---- Daylight saving ---------------------------------------------------------

struct DstCase {
  const char* spec;
  const char* start;  // UTC
  std::vector<std::string> next;
};

void ExpectDstCases(const char* zone, const std::vector<DstCase>& cases) {
  ScopedTimeZone tz(zone);
  for (const DstCase& c : cases) {
    EXPECT_EQ(NextLocal(c.spec, Utc(c.start), static_cast<int>(c.next.size())), c.next)
        << zone << " " << c.spec << " after " << c.start;
  }
}

// 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:00..02:59 does not exist.
TEST(CalendarEventDst, ViennaSpringGapRunsSkippedTimesAtThree) {
  SKIP_WITHOUT_ZONE("Europe/Vienna");
  ExpectDstCases("Europe/Vienna", {
      {"daily", "2026-03-27T22:10:00Z",
       {"2026-03-28 00:00:00 +0100", "2026-03-29 00:00:00 +0100", "2026-03-30 00:00:00 +0200",
        "2026-03-31 00:00:00 +0200"}},
      {"hourly", "2026-03-28T22:10:00Z",
       {"2026-03-29 00:00:00 +0100", "2026-03-29 01:00:00 +0100", "2026-03-29 03:00:00 +0200",
        "2026-03-29 04:00:00 +0200", "2026-03-29 05:00:00 +0200"}},
      {"02:30", "2026-03-27T22:10:00Z",
       {"2026-03-28 02:30:00 +0100", "2026-03-29 03:00:00 +0200", "2026-03-30 02:30:00 +0200",
        "2026-03-31 02:30:00 +0200"}},
      {"*/30", "2026-03-28T22:10:00Z",
       {"2026-03-28 23:30:00 +0100", "2026-03-29 00:00:00 +0100", "2026-03-29 00:30:00 +0100",
        "2026-03-29 01:00:00 +0100", "2026-03-29 01:30:00 +0100", "2026-03-29 03:00:00 +0200",
        "2026-03-29 03:30:00 +0200", "2026-03-29 04:00:00 +0200"}},
  });
}

// 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:00..02:59 happens twice.
TEST(CalendarEventDst, ViennaAutumnFoldRunsRepeatedTimesTwice) {
  SKIP_WITHOUT_ZONE("Europe/Vienna");
  ExpectDstCases("Europe/Vienna", {
      {"daily", "2026-10-23T21:10:00Z",
       {"2026-10-24 00:00:00 +0200", "2026-10-25 00:00:00 +0200", "2026-10-26 00:00:00 +0100",
        "2026-10-27 00:00:00 +0100"}},
      {"hourly", "2026-10-24T22:10:00Z",
       {"2026-10-25 01:00:00 +0200", "2026-10-25 02:00:00 +0200", "2026-10-25 02:00:00 +0100",
        "2026-10-25 03:00:00 +0100", "2026-10-25 04:00:00 +0100"}},
      {"02:30", "2026-10-23T22:10:00Z",
       {"2026-10-24 02:30:00 +0200", "2026-10-25 02:30:00 +0200", "2026-10-25 02:30:00 +0100",
        "2026-10-26 02:30:00 +0100"}},
      {"*/30", "2026-10-24T22:10:00Z",
       {"2026-10-25 00:30:00 +0200", "2026-10-25 01:00:00 +0200", "2026-10-25 01:30:00 +0200",
        "2026-10-25 02:00:00 +0200", "2026-10-25 02:30:00 +0200", "2026-10-25 02:00:00 +0100",
        "2026-10-25 02:30:00 +0100", "2026-10-25 03:00:00 +0100"}},
      // Started inside the second pass of the fold: the first pass is over.
      {"02:30", "2026-10-25T01:10:00Z",
       {"2026-10-25 02:30:00 +0100", "2026-10-26 02:30:00 +0100"}},
      // Started between the two passes' 02:30: the second is next.
      {"02:30", "2026-10-25T00:45:00Z",
       {"2026-10-25 02:30:00 +0100", "2026-10-26 02:30:00 +0100"}},
  });
}

// 2026-03-08: 02:00 EST becomes 03:00 EDT.
TEST(CalendarEventDst, NewYorkSpringGapRunsSkippedTimesAtThree) {
  SKIP_WITHOUT_ZONE("America/New_York");
  ExpectDstCases("America/New_York", {
      {"daily", "2026-03-07T04:10:00Z",
       {"2026-03-07 00:00:00 -0500", "2026-03-08 00:00:00 -0500", "2026-03-09 00:00:00 -0400",
        "2026-03-10 00:00:00 -0400"}},
      {"hourly", "2026-03-08T04:10:00Z",
       {"2026-03-08 00:00:00 -0500", "2026-03-08 01:00:00 -0500", "2026-03-08 03:00:00 -0400",
        "2026-03-08 04:00:00 -0400", "2026-03-08 05:00:00 -0400"}},
      {"02:30", "2026-03-07T04:10:00Z",
       {"2026-03-07 02:30:00 -0500", "2026-03-08 03:00:00 -0400", "2026-03-09 02:30:00 -0400"}},
      {"*/30", "2026-03-08T04:10:00Z",
       {"2026-03-07 23:30:00 -0500", "2026-03-08 00:00:00 -0500", "2026-03-08 00:30:00 -0500",
        "2026-03-08 01:00:00 -0500", "2026-03-08 01:30:00 -0500", "2026-03-08 03:00:00 -0400",
        "2026-03-08 03:30:00 -0400", "2026-03-08 04:00:00 -0400"}},
  });
}

// 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:00..01:59 happens twice.
TEST(CalendarEventDst, NewYorkAutumnFoldRunsRepeatedTimesTwice) {
  SKIP_WITHOUT_ZONE("America/New_York");
  ExpectDstCases("America/New_York", {
      {"daily", "2026-10-31T03:10:00Z",
       {"2026-10-31 00:00:00 -0400", "2026-11-01 00:00:00 -0400", "2026-11-02 00:00:00 -0500",
        "2026-11-03 00:00:00 -0500"}},
      {"hourly", "2026-11-01T04:10:00Z",
       {"2026-11-01 01:00:00 -0400", "2026-11-01 01:00:00 -0500", "2026-11-01 02:00:00 -0500",
        "2026-11-01 03:00:00 -0500", "2026-11-01 04:00:00 -0500"}},
      {"02:30", "2026-10-31T04:10:00Z",
       {"2026-10-31 02:30:00 -0400", "2026-11-01 02:30:00 -0500", "2026-11-02 02:30:00 -0500"}},
      {"*/30", "2026-11-01T04:10:00Z",
       {"2026-11-01 00:30:00 -0400", "2026-11-01 01:00:00 -0400", "2026-11-01 01:30:00 -0400",
        "2026-11-01 01:00:00 -0500", "2026-11-01 01:30:00 -0500", "2026-11-01 02:00:00 -0500",
        "2026-11-01 02:30:00 -0500", "2026-11-01 03:00:00 -0500"}},
      {"01:30", "2026-10-31T06:00:00Z",
       {"2026-11-01 01:30:00 -0400", "2026-11-01 01:30:00 -0500", "2026-11-02 01:30:00 -0500"}},
  });
}

TEST(CalendarEventDst, FarFutureDateAcrossManyChangesIsExact) {
  SKIP_WITHOUT_ZONE("Europe/Vienna");
  ScopedTimeZone tz("Europe/Vienna");
  // A summer date years ahead, from winter: the offset changes many times
  // in between and the answer is still in summer time.
  EXPECT_EQ(NextLocal("2031-07-15 02:30", Utc("2026-01-10T00:00:00Z"), 2),
            (std::vector<std::string>{"2031-07-15 02:30:00 +0200"}));
  EXPECT_EQ(NextLocal("*-03-29 02:30", Utc("2026-01-10T00:00:00Z"), 3),
            (std::vector<std::string>{"2026-03-29 03:00:00 +0200", "2027-03-29 02:30:00 +0200",
                                      "2028-03-29 02:30:00 +0200"}));
}

// A reference for Next written the slow, obvious way: every minute after
// `after` in turn, local time by localtime_r, and where the offset jumps
// forward, the wall-clock minutes it skips checked too (a match there runs
// at the jump).
template <typename Pred>
std::optional<std::int64_t> BruteForceNext(const Pred& matches, std::int64_t after, int max_minutes) {
  auto offset = [](std::int64_t t) {
    const std::time_t tt = static_cast<std::time_t>(t);
    std::tm tm{};
    localtime_r(&tt, &tm);
    return static_cast<std::int64_t>(tm.tm_gmtoff);
  };
  auto wall_matches = [&](std::int64_t wall) {
    const std::time_t tt = static_cast<std::time_t>(wall);
    std::tm tm{};
    gmtime_r(&tt, &tm);
    return matches(tm);
  };
  std::int64_t t = (after >= 0 ? after / 60 + 1 : -((-after) / 60)) * 60;
  if (t <= after) t += 60;
  std::int64_t previous = offset(t - 60);
  for (int i = 0; i < max_minutes; ++i, t += 60) {
    const std::int64_t now = offset(t);
    if (now > previous) {
      for (std::int64_t wall = t + previous; wall < t + now; wall += 60) {
        if (wall_matches(wall)) return t;
      }
    }
    previous = now;
    if (wall_matches(t + now)) return t;
  }
  return std::nullopt;
}

// Offset changes of the process's zone in [from, to), to the second.
std::vector<std::int64_t> OffsetChanges(std::int64_t from, std::int64_t to) {
  auto offset = [](std::int64_t t) {
    const std::time_t tt = static_cast<std::time_t>(t);
    std::tm tm{};
    localtime_r(&tt, &tm);
    return tm.tm_gmtoff;
  };
  std::vector<std::int64_t> changes;
  for (std::int64_t t = from; t + 3600 <= to; t += 3600) {
    if (offset(t) == offset(t + 3600)) continue;
    std::int64_t lo = t, hi = t + 3600;
    while (hi - lo > 1) {
      const std::int64_t mid = lo + (hi - lo) / 2;
      (offset(mid) == offset(lo) ? lo : hi) = mid;
    }
    changes.push_back(hi);
  }
  return changes;
}

// Around every offset change of 2026 in zones with whole-hour, half-hour
// and midnight changes, Next agrees with the brute-force reference from
// starts every 47 minutes 13 seconds, 30 hours either side.
TEST(CalendarEventDst, AgreesWithBruteForceAroundEveryChangeOf2026) {
  struct Spec {
    const char* spec;
    bool (*matches)(const std::tm&);
  };
  const std::vector<Spec> specs = {
      {"*/30", [](const std::tm& t) { return t.tm_min % 30 == 0; }},
      {"hourly", [](const std::tm& t) { return t.tm_min == 0; }},
      {"daily", [](const std::tm& t) { return t.tm_hour == 0 && t.tm_min == 0; }},
      {"02:30", [](const std::tm& t) { return t.tm_hour == 2 && t.tm_min == 30; }},
      {"01:30", [](const std::tm& t) { return t.tm_hour == 1 && t.tm_min == 30; }},
      {"2,3:15,45", [](const std::tm& t) { return (t.tm_hour == 2 || t.tm_hour == 3) && t.tm_min % 30 == 15; }},
      {"sun 0..3:*/20", [](const std::tm& t) { return t.tm_wday == 0 && t.tm_hour <= 3 && t.tm_min % 20 == 0; }},
      {"mon..fri 8..17,22:0/15",
       [](const std::tm& t) {
         return t.tm_wday >= 1 && t.tm_wday <= 5 && ((t.tm_hour >= 8 && t.tm_hour <= 17) || t.tm_hour == 22) &&
                t.tm_min % 15 == 0;
       }},
  };
  int zones_checked = 0;
  for (const char* zone : {"Europe/Vienna", "America/New_York", "Australia/Lord_Howe", "America/Santiago"}) {
    if (!HaveZone(zone)) continue;
    ++zones_checked;
    ScopedTimeZone tz(zone);
    const std::vector<std::int64_t> changes =
        OffsetChanges(Utc("2026-01-01T00:00:00Z"), Utc("2027-01-01T00:00:00Z"));
    EXPECT_EQ(changes.size(), 2u) << zone;
    for (std::int64_t change : changes) {
      for (std::int64_t start = change - 30 * 3600; start < change + 30 * 3600; start += 47 * 60 + 13) {
        for (const Spec& s : specs) {
          const std::optional<std::int64_t> next = MustParse(s.spec).Next(start);
          const std::optional<std::int64_t> expected = BruteForceNext(s.matches, start, 10 * 1440);
          ASSERT_EQ(next, expected) << zone << " " << s.spec << " after " << Local(start) << ": got "
                                    << (next ? Local(*next) : "none") << ", expected "
                                    << (expected ? Local(*expected) : "none");
        }
      }
    }
  }
  if (zones_checked == 0) GTEST_SKIP() << "no time zone with daylight saving installed (install tzdata)";
}

// ---- Grammar -----------------------------------------------------------------

TEST(CalendarEventParse, AcceptedFormsAndTheirMeaning) {
  const std::vector<std::pair<const char*, const char*>> cases = {
      {"mon", "Mon *-*-* 00:00:00"},
      {"MONDAY..Wednesday", "Mon..Wed *-*-* 00:00:00"},
      {"sat..mon 02:30", "Mon,Sat,Sun *-*-* 02:30:00"},  // wraps over the week's end
      {"mon..sun 02:30", "*-*-* 02:30:00"},
      {"02:30:15", "*-*-* 02:30:15"},
      {"*:0/15", "*-*-* *:00,15,30,45:00"},
      {"*:*:0/20", "*-*-* *:*:00,20,40"},
      {"0/15", "*-*-* *:00,15,30,45:00"},
      {"5", "*-*-* *:05:00"},
      {"8..18/2:00", "*-*-* 08,10,12,14,16,18:00:00"},
      {"10..20/5", "*-*-* *:10,15,20:00"},
      {"*-*-* 04:00", "*-*-* 04:00:00"},
      {"2026..2028-02-29", "2026..2028-02-29 00:00:00"},
      {"2030/5-01-01", "2030/5-01-01 00:00:00"},
      {"01-01", "*-01-01 00:00:00"},
      {"*-1,2,3,9..12-*/10 1:2:3", "*-01..03,09..12-01,11,21,31 01:02:03"},
      {"Mon,Tue   2015-10-21   0:0", "Mon,Tue 2015-10-21 00:00:00"},
      {"mon 23:59:59", "Mon *-*-* 23:59:59"},
      {"fri *-02-29", "Fri *-02-29 00:00:00"},
  };
  for (const auto& [spec, normalized] : cases) {
    EXPECT_EQ(MustParse(spec).Normalized(), normalized) << spec;
  }
}

TEST(CalendarEventParse, BadSpecsAreRejectedNamingTheProblem) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "schedule '': the schedule is empty"},
      {"   ", "schedule '   ': the schedule is empty"},
      {"mon..xyz 8:00", "schedule 'mon..xyz 8:00': unknown weekday 'xyz'"},
      {"nope", "schedule 'nope': unknown weekday 'nope'"},
      {"mon 02:70", "schedule 'mon 02:70': minute 70 is out of range 0..59"},
      {"mon 25:00", "schedule 'mon 25:00': hour 25 is out of range 0..23"},
      {"1:2:60", "schedule '1:2:60': second 60 is out of range 0..59"},
      {"*-13-01", "schedule '*-13-01': month 13 is out of range 1..12"},
      {"*-0-01", "schedule '*-0-01': month 0 is out of range 1..12"},
      {"*-*-32", "schedule '*-*-32': day 32 is out of range 1..31"},
      {"1969-01-01", "schedule '1969-01-01': year 1969 is out of range 1970..2199"},
      {"2200-01-01", "schedule '2200-01-01': year 2200 is out of range 1970..2199"},
      {"*/0", "schedule '*/0': step in the minute field 0 is out of range 1..59"},
      {"0/60", "schedule '0/60': step in the minute field 60 is out of range 1..59"},
      {"*/", "schedule '*/': step in the minute field is missing"},
      {"10..5", "schedule '10..5': range '10..5' in the minute field runs backwards"},
      {"99999999999999999999", "schedule '99999999999999999999': minute '99999999999999999999' is too large"},
      {"1:99999999999/2", "schedule '1:99999999999/2': minute '99999999999' is too large"},
      {"02:30 mon", "schedule '02:30 mon': weekday 'mon' must come first"},
      {"mon 02:30 extra", "schedule 'mon 02:30 extra': unexpected 'extra' (the shape is [WEEKDAY] "
                          "[[YEARS-]MONTHS-DAYS] [HOURS:MINUTES[:SECONDS]])"},
      {"02:30 *-*-*", "schedule '02:30 *-*-*': unexpected '*-*-*' (the shape is [WEEKDAY] "
                      "[[YEARS-]MONTHS-DAYS] [HOURS:MINUTES[:SECONDS]])"},
      {"daily 02:30", "schedule 'daily 02:30': 'daily' stands alone, but '02:30' follows it"},
      {"Mon-Fri 02:30", "schedule 'Mon-Fri 02:30': unknown weekday 'Mon-Fri'"},
      {"* 02:30", "schedule '* 02:30': unexpected '02:30' (the shape is [WEEKDAY] "
                  "[[YEARS-]MONTHS-DAYS] [HOURS:MINUTES[:SECONDS]])"},
      {"mon,,fri", "schedule 'mon,,fri': empty value in the weekdays 'mon,,fri'"},
      {"mon..", "schedule 'mon..': a weekday is missing"},
      {"1,,2:00", "schedule '1,,2:00': empty value in the hour field '1,,2'"},
      {"1:", "schedule '1:': the minute field is empty"},
      {":5", "schedule ':5': the hour field is empty"},
      {"1:2:3:4", "schedule '1:2:3:4': time '1:2:3:4' has more than HOURS:MINUTES:SECONDS"},
      {"1-2-3-4", "schedule '1-2-3-4': date '1-2-3-4' has more than YEARS-MONTHS-DAYS"},
      {"-5", "schedule '-5': the month field is empty"},
      {"*,5:00", "schedule '*,5:00': '*' must stand alone in the hour field '*,5'"},
      {"*/2-01-01", "schedule '*/2-01-01': a repetition in the year field needs a start, not '*'"},
      {"1.5:00", "schedule '1.5:00': unexpected '1.5' in the hour field"},
      {"+5", "schedule '+5': unexpected '+5' in the minute field"},
      {"1..2..3", "schedule '1..2..3': unexpected '2..3' in the minute field"},
      {"mon;rm -rf /", "schedule 'mon;rm -rf /': unknown weekday 'mon;rm'"},
      {std::string("a\nb"), "schedule 'a\\x0ab': unknown weekday 'a\\x0ab'"},
      {std::string("mon\0", 4), "schedule 'mon\\x00': unknown weekday 'mon\\x00'"},
  };
  for (const auto& [spec, message] : cases) {
    auto event = CalendarEvent::Parse(spec);
    ASSERT_FALSE(event.ok()) << spec << " was accepted as " << event->Normalized();
    EXPECT_EQ(event.status().code(), core::Code::kInvalidArgument) << spec;
    EXPECT_EQ(event.status().message(), message) << spec;
  }
}

TEST(CalendarEventParse, LongSpecIsShortenedInTheMessage) {
  const std::string spec = "mon " + std::string(500, '1');
  auto event = CalendarEvent::Parse(spec);
  ASSERT_FALSE(event.ok());
  EXPECT_LT(event.status().message().size(), 300u);
  EXPECT_EQ(event.status().message().find('\n'), std::string::npos);
}

// ---- Canonical text ----------------------------------------------------------

TEST(CalendarEventNormalized, ReparsesToTheSameEventAndTheSameInstants) {
  SKIP_WITHOUT_ZONE("Europe/Vienna");
  ScopedTimeZone tz("Europe/Vienna");
  const std::vector<std::string> specs = {
      "minutely", "hourly", "daily", "weekly", "monthly", "yearly", "quarterly", "semiannually",
      "mon..fri 8..17,22:0/15", "sat..mon 02:30", "*:*:0/20", "*-1,2,3,9..12-*/10 1:2:3",
      "2026..2028,2030/7-02-29", "Sat *-1..7 15:00", "12/2:5", "fri 12..13:5/20", "*/7",
      "mon 2015-10-21", "3..21/9:7,8,9,44..59"};
  for (const std::string& spec : specs) {
    const CalendarEvent event = MustParse(spec);
    const CalendarEvent again = MustParse(event.Normalized());
    EXPECT_EQ(again, event) << spec << " -> " << event.Normalized();
    EXPECT_EQ(again.Normalized(), event.Normalized()) << spec;
    EXPECT_EQ(NextInstants(again, Utc("2026-03-27T00:00:00Z"), 200),
              NextInstants(event, Utc("2026-03-27T00:00:00Z"), 200))
        << spec;
  }
}

// ---- Bounds ------------------------------------------------------------------

TEST(CalendarEventNext, NeverMatchingSpecsEndWithoutAnAnswer) {
  ScopedTimeZone tz("UTC");
  EXPECT_EQ(MustParse("*-02-30").Next(0), std::nullopt);
  EXPECT_EQ(MustParse("2199-12-31 23:59:59").Next(Utc("2199-12-31T23:59:59Z")), std::nullopt);
  EXPECT_EQ(MustParse("2199-12-31 23:59:59").Next(Utc("2026-01-01T00:00:00Z")),
            Utc("2199-12-31T23:59:59Z"));
  EXPECT_EQ(MustParse("daily").Next(INT64_MAX), std::nullopt);
  EXPECT_EQ(MustParse("daily").Next(INT64_MIN), Utc("1900-01-01T00:00:00Z"));
  // Friday the 29th of February: 2036, then 2064.
  EXPECT_EQ(NextLocal("fri *-02-29", Utc("2026-01-01T00:00:00Z"), 2),
            (std::vector<std::string>{"2036-02-29 00:00:00 +0000", "2064-02-29 00:00:00 +0000"}));
}

TEST(CalendarEventNext, IsFastForEverySpec) {
  SKIP_WITHOUT_ZONE("Europe/Vienna");
  ScopedTimeZone tz("Europe/Vienna");
  // The worst cases: far away, never, every second, a rare weekday/date.
  const std::vector<std::string> specs = {"*-02-30", "2199-12-31", "*:*:*", "fri *-02-29",
                                          "mon..fri 8..17,22:0/15", "2031-07-15 02:30"};
  for (const std::string& spec : specs) {
    const CalendarEvent event = MustParse(spec);
    const auto begin = std::chrono::steady_clock::now();
    for (int i = 0; i < 100; ++i) (void)event.Next(Utc("2026-03-29T00:59:00Z") + i * 7919);
    const auto per_call = (std::chrono::steady_clock::now() - begin) / 100;
    EXPECT_LT(per_call, std::chrono::milliseconds(5)) << spec;
  }
}

}  // namespace
}  // namespace blkrep::jobs
