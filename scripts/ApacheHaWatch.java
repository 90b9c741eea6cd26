import java.util.Collections;
import java.util.List;

import org.apache.rocketmq.remoting.protocol.body.BrokerReplicasInfo;
import org.apache.rocketmq.tools.admin.DefaultMQAdminExt;

/**
 * Watches an Apache RocketMQ 5.x controller (RIP-44 controller mode) for master changes of one
 * broker name, for the failover measurement of scripts/bench_ha.py (--apache-failover-rounds).
 *
 *   java -cp "CLASSES:LIB/*" ApacheHaWatch CONTROLLER_ADDR NAMESRV_ADDR [BROKER_NAME] [POLL_MS]
 *
 * LIB is the folder scripts/setup-apache.sh prints (rocketmq-tools 5.4.0 and its dependencies).
 * Every POLL_MS (default 50) it asks the controller for the broker's replica info
 * (DefaultMQAdminExt.getInSyncStateData, what `mqadmin getSyncStateSet` shows) and prints one
 * line on stdout whenever the master address, the master epoch or the number of live in-sync
 * replicas changes, the first one at once:
 *
 *   <epoch ms> master=<addr or -> epoch=<masterEpoch> inSync=<live in-sync replicas> syncStateSetEpoch=<n>
 *
 * A failed poll prints "<epoch ms> error <message>" once, until a poll succeeds again (which
 * prints the state line even if nothing changed). The timestamp is System.currentTimeMillis()
 * right after the answer arrived. Runs until killed or stdin closes.
 */
public class ApacheHaWatch {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: ApacheHaWatch CONTROLLER_ADDR NAMESRV_ADDR [BROKER_NAME] [POLL_MS]");
            System.exit(2);
        }
        String controller = args[0];
        String broker = args.length > 2 ? args[2] : "broker-a";
        long pollMs = args.length > 3 ? Long.parseLong(args[3]) : 50;
        List<String> names = Collections.singletonList(broker);

        // Exit when the parent goes away (it holds our stdin open).
        Thread stdinWatch = new Thread(() -> {
            try {
                while (System.in.read() >= 0) {
                }
            } catch (Exception ignored) {
            }
            System.exit(0);
        });
        stdinWatch.setDaemon(true);
        stdinWatch.start();

        DefaultMQAdminExt admin = new DefaultMQAdminExt(1000);
        // A name server address keeps the client from looking one up over HTTP at start.
        admin.setNamesrvAddr(args[1]);
        admin.setInstanceName("ApacheHaWatch-" + System.nanoTime());
        admin.start();
        System.err.println("ApacheHaWatch: polling " + controller + " for " + broker + " every " + pollMs + " ms");

        String last = null;
        while (true) {
            long t0 = System.currentTimeMillis();
            String state;
            try {
                BrokerReplicasInfo info = admin.getInSyncStateData(controller, names);
                BrokerReplicasInfo.ReplicasInfo r =
                    info == null ? null : info.getReplicasInfoTable().get(broker);
                if (r == null) {
                    state = "master=- epoch=-1 inSync=0 syncStateSetEpoch=-1";
                } else {
                    int inSync = 0;
                    if (r.getInSyncReplicas() != null) {
                        for (BrokerReplicasInfo.ReplicaIdentity id : r.getInSyncReplicas()) {
                            if (Boolean.TRUE.equals(id.getAlive())) {
                                inSync++;
                            }
                        }
                    }
                    String addr = r.getMasterAddress();
                    if (addr == null || addr.isEmpty() || addr.equals("null")) {
                        addr = "-";
                    }
                    state = "master=" + addr + " epoch=" + r.getMasterEpoch() + " inSync=" + inSync
                        + " syncStateSetEpoch=" + r.getSyncStateSetEpoch();
                }
            } catch (Exception e) {
                state = "error " + e.getClass().getSimpleName() + ": " + String.valueOf(e.getMessage()).replace('\n', ' ');
            }
            long now = System.currentTimeMillis();
            // A state line is printed on any change; an error line only on entering the error state.
            boolean isError = state.startsWith("error ");
            boolean wasError = last != null && last.startsWith("error ");
            boolean print;
            if (isError) {
                print = !wasError;
            } else {
                // syncStateSetEpoch alone does not make a line (only master, epoch, inSync do).
                print = last == null || wasError || !core(state).equals(core(last));
            }
            if (print) {
                System.out.println(now + " " + state);
                System.out.flush();
            }
            last = state;
            long sleep = pollMs - (System.currentTimeMillis() - t0);
            if (sleep > 0) {
                Thread.sleep(sleep);
            }
        }
    }

    private static String core(String state) {
        int i = state.indexOf(" syncStateSetEpoch=");
        return i < 0 ? state : state.substring(0, i);
    }
}
