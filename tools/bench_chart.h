// The SVG chart of `blkrep bench --svg FILE`: cycle time and wire bytes
// against the dirty fraction, one series per tool (blkrep beside rsync), or
// (a replay) against the trace time of each cycle.
//
// Design note. A standalone SVG 1.1 document (no scripts, no external
// resources) that any browser opens: two panels side by side, each with
// axes, ticks, tick labels, axis titles, a legend and the chart's title. The
// dirty fraction is on a log10 axis (fractions typically span decades); trace
// time and the values on linear axes from 0. Every point is a <circle> carrying its values
// as data-series / data-x / data-y attributes and a <title> tooltip, so a
// test (or a script) can read the numbers back out of the picture.
//
// Thread safety: pure function.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace blkrep::tools::bench {

enum class ChartX : std::uint8_t {
  kDirtyFraction,  // x > 0, log scale, labelled in %
  kTraceSeconds,   // x >= 0, linear, labelled in s
};

struct ChartPoint {
  double x = 0;                    // per ChartX; a point outside its range is left out
  std::optional<double> seconds;   // absent: not measured (that point is left out)
  std::optional<double> wire_bytes;
};

struct ChartSeries {
  std::string name;  // "blkrep", "rsync"
  std::vector<ChartPoint> points;
};

// `subtitle` is a line under the title (workload, machine); both are escaped.
std::string RenderCycleChart(const std::string& title, const std::string& subtitle,
                             const std::vector<ChartSeries>& series, ChartX x_axis = ChartX::kDirtyFraction);

}  // namespace blkrep::tools::bench
