# Charts for docs/benchmarks.md from mqs_bench --report --plot-dir DIR:
#   gnuplot -e "dir='DIR'" tests/bench/plot.gnuplot
# throughput.dat: index "label" sidecar_msgs_s direct_msgs_s
# latency.dat:    index "label" sidecar_p50_ms direct_p50_ms sidecar_p99_ms direct_p99_ms
if (!exists("dir")) dir = "."
set terminal pngcairo size 1400,560 noenhanced font "sans,10"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set grid ytics
set key top left
set xtics rotate by -45 scale 0

set output dir."/benchmarks-throughput.png"
set title "Throughput, msgs/s: mq-sidecar (unix socket) beside a direct rabbitmq-c client" . \
          " (c = classic, q = quorum queue)"
set ylabel "msgs/s"
set logscale y
plot dir."/throughput.dat" using 4:xtic(2) title "direct" lc rgb "#7f7f7f", \
     "" using 3 title "sidecar" lc rgb "#1f77b4"

set output dir."/benchmarks-latency.png"
set title "Latency, ms (log scale): p50 and p99, sidecar beside direct" . \
          " (publish: to the confirm; e2e and streams: publish to delivery)"
set ylabel "ms"
plot dir."/latency.dat" using 4:xtic(2) title "direct p50" lc rgb "#aec7e8", \
     "" using 3 title "sidecar p50" lc rgb "#1f77b4", \
     "" using 6 title "direct p99" lc rgb "#c7c7c7", \
     "" using 5 title "sidecar p99" lc rgb "#d62728"
