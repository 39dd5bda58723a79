// Requests per second a running Kafka broker serves, by request type, over an interval: what the
// broker's CPU is spent on (benchmarks/RESULTS.md, 2026-12-05 evening).  Reads the broker's own
// kafka.network RequestMetrics through the JDK's attach API (same machine, same user; no JMX port):
//
//     java benchmarks/BrokerRequests.java <broker pid> [seconds, default 10]
//
// (`pgrep -f kafka.Kafka` finds the pid of a local stack's broker.)
import com.sun.tools.attach.VirtualMachine;
import java.util.Map;
import java.util.TreeMap;
import javax.management.MBeanServerConnection;
import javax.management.ObjectName;
import javax.management.remote.JMXConnector;
import javax.management.remote.JMXConnectorFactory;
import javax.management.remote.JMXServiceURL;

public class BrokerRequests {
    static Map<String, Long> counts(MBeanServerConnection server) throws Exception {
        Map<String, Long> out = new TreeMap<>();
        ObjectName pattern = new ObjectName("kafka.network:type=RequestMetrics,name=RequestsPerSec,*");
        for (ObjectName name : server.queryNames(pattern, null)) {
            long count = ((Number) server.getAttribute(name, "Count")).longValue();
            out.merge(name.getKeyProperty("request"), count, Long::sum);
        }
        return out;
    }

    public static void main(String[] args) throws Exception {
        double seconds = args.length > 1 ? Double.parseDouble(args[1]) : 10.0;
        VirtualMachine vm = VirtualMachine.attach(args[0]);
        try (JMXConnector connector = JMXConnectorFactory.connect(new JMXServiceURL(vm.startLocalManagementAgent()))) {
            MBeanServerConnection server = connector.getMBeanServerConnection();
            Map<String, Long> before = counts(server);
            Thread.sleep((long) (seconds * 1000));
            Map<String, Long> after = counts(server);
            double total = 0;
            for (Map.Entry<String, Long> e : after.entrySet()) {
                double rate = (e.getValue() - before.getOrDefault(e.getKey(), 0L)) / seconds;
                if (rate > 0 && !e.getKey().equals("FetchConsumer")) {  // FetchConsumer: the consumers' share of Fetch
                    System.out.printf("%-24s %9.1f/s%n", e.getKey(), rate);
                    total += rate;
                }
            }
            System.out.printf("%-24s %9.1f/s%n", "all", total);
        } finally {
            vm.detach();
        }
    }
}
