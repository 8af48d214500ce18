#include "tools/bench_chart.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>

namespace blkrep::tools::bench {

namespace {

constexpr double kWidth = 960, kHeight = 440;
constexpr double kPanelWidth = 430, kPanelTop = 80, kPanelHeight = 280, kPanelLeft[2] = {80, 560};
constexpr const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd"};

std::string Escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default:
        if (static_cast<unsigned char>(c) >= 0x20 || c == '\n' || c == '\t') out += c;
    }
  }
  return out;
}

std::string Num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.15g", v);
  return buf;
}

std::string Px(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

// A "nice" upper bound and step for an axis from 0 to max.
std::pair<double, double> NiceAxis(double max) {
  if (!(max > 0)) return {1, 0.2};
  double raw = max / 5;
  double mag = std::pow(10, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  }
  return {std::ceil(max / step) * step, step};
}

std::string FormatBytes(double v) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (std::fabs(v) >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, v == std::floor(v) ? "%.0f %s" : "%.3g %s", v, units[u]);
  return buf;
}

std::string FormatFraction(double f) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g%%", f * 100);
  return buf;
}

}  // namespace

std::string RenderCycleChart(const std::string& title, const std::string& subtitle,
                             const std::vector<ChartSeries>& series, ChartX x_axis) {
  const bool log_x = x_axis == ChartX::kDirtyFraction;
  auto in_range = [&](double x) { return log_x ? x > 0 : x >= 0; };
  double fmin = 0, fmax = 0;
  bool any = false;
  for (const auto& s : series) {
    for (const auto& p : s.points) {
      if (!in_range(p.x)) continue;
      fmin = any ? std::min(fmin, p.x) : p.x;
      fmax = any ? std::max(fmax, p.x) : p.x;
      any = true;
    }
  }
  if (!any) fmin = 0.001, fmax = 1;
  // Log: the decades around the points. Linear: 0 to a nice bound.
  const auto [xmax, xstep] = NiceAxis(fmax);
  const double lx0 = log_x ? std::log10(fmin) - 0.15 : 0, lx1 = log_x ? std::log10(fmax) + 0.15 : xmax;
  auto x_label = [&](double x) { return log_x ? FormatFraction(x) : Num(x) + " s"; };

  std::string svg;
  svg += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  svg += "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"" + Px(kWidth) + "\" height=\"" +
         Px(kHeight) + "\" viewBox=\"0 0 " + Px(kWidth) + " " + Px(kHeight) +
         "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  svg += "<title>" + Escape(title) + "</title>\n";
  svg += "<rect x=\"0\" y=\"0\" width=\"" + Px(kWidth) + "\" height=\"" + Px(kHeight) + "\" fill=\"white\"/>\n";
  svg += "<text x=\"" + Px(kWidth / 2) + "\" y=\"26\" text-anchor=\"middle\" font-size=\"17\" font-weight=\"bold\">" +
         Escape(title) + "</text>\n";
  svg += "<text x=\"" + Px(kWidth / 2) + "\" y=\"46\" text-anchor=\"middle\" fill=\"#555\">" + Escape(subtitle) +
         "</text>\n";

  struct Panel {
    const char* id;
    const char* title;
    const char* axis;
    std::function<std::optional<double>(const ChartPoint&)> value;
    std::function<std::string(double)> label;
  };
  const Panel panels[2] = {
      {"seconds", "Cycle time", "seconds", [](const ChartPoint& p) { return p.seconds; },
       [](double v) { return Num(v); }},
      {"wire_bytes", "Bytes on the wire", "bytes", [](const ChartPoint& p) { return p.wire_bytes; },
       [](double v) { return FormatBytes(v); }},
  };
  for (int pi = 0; pi < 2; ++pi) {
    const Panel& panel = panels[pi];
    const double left = kPanelLeft[pi], right = left + kPanelWidth - 70;
    const double top = kPanelTop, bottom = kPanelTop + kPanelHeight;
    double vmax = 0;
    for (const auto& s : series) {
      for (const auto& p : s.points) {
        if (auto v = panel.value(p)) vmax = std::max(vmax, *v);
      }
    }
    auto [ymax, ystep] = NiceAxis(vmax);
    auto X = [&](double f) { return left + ((log_x ? std::log10(f) : f) - lx0) / (lx1 - lx0) * (right - left); };
    auto Y = [&](double v) { return bottom - v / ymax * (bottom - top); };
    svg += "<g id=\"panel-" + std::string(panel.id) + "\">\n";
    svg += "<text x=\"" + Px((left + right) / 2) + "\" y=\"" + Px(top - 12) +
           "\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">" + panel.title + "</text>\n";
    // Grid and y ticks.
    for (double v = 0; v <= ymax + ystep / 2; v += ystep) {
      svg += "<line x1=\"" + Px(left) + "\" y1=\"" + Px(Y(v)) + "\" x2=\"" + Px(right) + "\" y2=\"" + Px(Y(v)) +
             "\" stroke=\"#e5e5e5\"/>\n";
      svg += "<text x=\"" + Px(left - 6) + "\" y=\"" + Px(Y(v) + 4) + "\" text-anchor=\"end\">" +
             Escape(panel.label(v)) + "</text>\n";
    }
    // X ticks: decades inside the range and every measured fraction (log),
    // or even steps from 0 (linear).
    std::vector<double> ticks;
    if (log_x) {
      for (int e = static_cast<int>(std::ceil(lx0)); e <= static_cast<int>(std::floor(lx1)); ++e) {
        ticks.push_back(std::pow(10, e));
      }
      for (const auto& s : series) {
        for (const auto& p : s.points) {
          if (in_range(p.x)) ticks.push_back(p.x);
        }
      }
    } else {
      for (double v = 0; v <= xmax + xstep / 2; v += xstep) ticks.push_back(v);
    }
    std::sort(ticks.begin(), ticks.end());
    double last_x = -1e9;
    for (double f : ticks) {
      double x = X(f);
      if (x - last_x < 28) continue;  // labels would overlap
      last_x = x;
      svg += "<line x1=\"" + Px(x) + "\" y1=\"" + Px(bottom) + "\" x2=\"" + Px(x) + "\" y2=\"" + Px(bottom + 5) +
             "\" stroke=\"black\"/>\n";
      svg += "<text x=\"" + Px(x) + "\" y=\"" + Px(bottom + 18) + "\" text-anchor=\"middle\">" +
             Escape(x_label(f)) + "</text>\n";
    }
    // Axes and their titles.
    svg += "<line x1=\"" + Px(left) + "\" y1=\"" + Px(bottom) + "\" x2=\"" + Px(right) + "\" y2=\"" + Px(bottom) +
           "\" stroke=\"black\"/>\n";
    svg += "<line x1=\"" + Px(left) + "\" y1=\"" + Px(top) + "\" x2=\"" + Px(left) + "\" y2=\"" + Px(bottom) +
           "\" stroke=\"black\"/>\n";
    svg += "<text x=\"" + Px((left + right) / 2) + "\" y=\"" + Px(bottom + 38) +
           "\" text-anchor=\"middle\">" +
           (log_x ? "dirty fraction of the volume's blocks (log scale)" : "trace time of the cycle (seconds)") +
           "</text>\n";
    svg += "<text transform=\"translate(" + Px(left - 62) + " " + Px((top + bottom) / 2) +
           ") rotate(-90)\" text-anchor=\"middle\">" + panel.axis + "</text>\n";
    // Series.
    for (std::size_t si = 0; si < series.size(); ++si) {
      const ChartSeries& s = series[si];
      const char* color = kColors[si % 4];
      std::string points;
      for (const auto& p : s.points) {
        auto v = panel.value(p);
        if (!v || !in_range(p.x)) continue;
        points += Px(X(p.x)) + "," + Px(Y(*v)) + " ";
      }
      if (!points.empty()) {
        svg += "<polyline fill=\"none\" stroke=\"" + std::string(color) + "\" stroke-width=\"2\" points=\"" +
               points + "\"/>\n";
      }
      for (const auto& p : s.points) {
        auto v = panel.value(p);
        if (!v || !in_range(p.x)) continue;
        svg += "<circle cx=\"" + Px(X(p.x)) + "\" cy=\"" + Px(Y(*v)) + "\" r=\"4\" fill=\"" + color +
               "\" data-panel=\"" + panel.id + "\" data-series=\"" + Escape(s.name) + "\" data-x=\"" + Num(p.x) +
               "\" data-y=\"" + Num(*v) + "\"><title>" + Escape(s.name) + ", " +
               Escape(log_x ? x_label(p.x) + " dirty" : "at " + x_label(p.x)) + ": " + Escape(panel.label(*v)) +
               "</title></circle>\n";
      }
    }
    // Legend, top left inside the panel.
    for (std::size_t si = 0; si < series.size(); ++si) {
      double ly = top + 8 + 18 * static_cast<double>(si);
      svg += "<rect x=\"" + Px(left + 10) + "\" y=\"" + Px(ly) + "\" width=\"14\" height=\"10\" fill=\"" +
             kColors[si % 4] + "\"/>\n";
      svg += "<text x=\"" + Px(left + 30) + "\" y=\"" + Px(ly + 9) + "\">" + Escape(series[si].name) + "</text>\n";
    }
    svg += "</g>\n";
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace blkrep::tools::bench
