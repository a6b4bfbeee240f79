"""A notebook cell: start a SparkSession on Kubernetes through sparkrelay.

Run docker/notebook/start-sparkrelay.sh first (the lifecycle configuration does).
The sidecar keeps the lease's settings in $SPARK_CONF_DIR/spark-defaults.conf, which
spark-submit (and so PySpark) reads by itself; this cell also applies spark.json
explicitly, so it works even in a kernel started before the script ran, and it
refuses to start without a lease instead of letting executors dial nowhere. After a
lease change (the notebook prints a line saying so) run it again: spark.stop() first.

Set for your cluster: SPARK_MASTER (k8s://https://<API server>), SPARK_IMAGE (an
executor image with the same Spark and Python versions as the notebook) and
SPARK_NAMESPACE. Executor pods get the label spark-role=executor from Spark, which
the relay's NetworkPolicy example admits.
"""
import json
import os

from pyspark.sql import SparkSession

lease_path = os.environ.get("SPARKRELAY_SPARK_JSON",
                            os.path.expanduser("~/.sparkrelay/spark.json"))
with open(lease_path) as f:
    lease = json.load(f)
print(f"sparkrelay lease {lease['lease']}: executors dial {lease['host']} "
      f"ports {lease['ports']}")

builder = (SparkSession.builder
           .appName("sparkrelay-example")
           .master(os.environ.get("SPARK_MASTER", "k8s://https://kubernetes.default.svc"))
           .config("spark.submit.deployMode", "client")
           .config("spark.kubernetes.namespace", os.environ.get("SPARK_NAMESPACE", "spark"))
           .config("spark.kubernetes.container.image",
                   os.environ.get("SPARK_IMAGE", "apache/spark-py:v3.4.0"))
           .config("spark.executor.instances", "2"))
# spark.driver.host, bindAddress, port, blockManager.port, port.maxRetries=0, ...
for key, value in lease["spark"].items():
    builder = builder.config(key, value)
spark = builder.getOrCreate()

# The driver listens on 127.0.0.1 at exactly the leased ports.
conf = spark.sparkContext.getConf()
assert conf.get("spark.driver.port") == lease["spark"]["spark.driver.port"]
assert conf.get("spark.driver.bindAddress") == "127.0.0.1"

# A job whose tasks run on the executors: every result crosses the relay.
total = spark.sparkContext.parallelize(range(1_000_000), 8).map(lambda x: x * 2).sum()
assert total == 999_999_000_000, total
print("executors reached the driver through sparkrelay; sum =", total)

# Broadcast (blockManager port) and a shuffle.
words = spark.sparkContext.broadcast({i: f"w{i % 10}" for i in range(10_000)})
counts = (spark.sparkContext.parallelize(range(10_000), 4)
          .map(lambda i: (words.value[i], 1)).reduceByKey(lambda a, b: a + b).collect())
assert sorted(counts) == [(f"w{i}", 1000) for i in range(10)]
print("broadcast and shuffle OK")
spark.stop()
