"""PyTorch's CIFAR-10 tutorial ("Training a Classifier"), ported line for line: a ``Module`` with
``forward``, a loss, SGD with momentum, and a hand-written training loop over a data loader. The 8x8
digits that ship with scikit-learn stand in for CIFAR-10, so the net's sizes shrink; the loop is the
tutorial's, running on every backend.

    UNIDL_BACKEND=tensorflow python examples/torch_style.py    # EPOCHS=1 SAMPLES=256 for a quick run

What changes from PyTorch: ``optimizer.zero_grad(); loss.backward(); optimizer.step()`` is one call of
``ud.train_step`` (compiled on the graph backends), and ``torch.max(outputs, 1)`` is ``ud.ops.argmax``.
"""

import os

import unidl as ud
import unidl.nn as nn
import unidl.ops as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)   # the tutorial: Conv2d(3, 6, 5) on 32x32 images
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 2 * 2, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = F.flatten(x, 1)  # flatten all dimensions except batch
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


def main(epochs: int = 20, samples: int | None = None) -> float:
    """Train for ``epochs`` epochs (on the first ``samples`` training images only, for a quick run)."""
    ud.manual_seed(0)
    (x, y), testset = ud.datasets.digits("train"), ud.datasets.digits("test")
    trainset = (x[:samples], y[:samples])
    trainloader = ud.data.DataLoader(ud.data.TensorDataset(*trainset), batch_size=4 * 4, shuffle=True, seed=0)
    testloader = ud.data.DataLoader(ud.data.TensorDataset(*testset), batch_size=64, shuffle=False)
    classes = tuple(str(digit) for digit in range(10))

    net = Net()
    criterion = nn.CrossEntropyLoss()
    optimizer = ud.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)  # the tutorial: lr=0.001, batches of 4
    step = ud.train_step(net, criterion, optimizer)  # zero_grad, forward, loss, backward, step
    print(f"backend={ud.get_backend()}")

    for epoch in range(epochs):  # loop over the dataset multiple times
        running_loss = 0.0
        for i, data in enumerate(trainloader, 0):
            # get the inputs; data is a list of [inputs, labels]
            inputs, labels = data
            loss = step(inputs, labels)
            running_loss += float(loss)
            if i % 30 == 29:  # print every 30 mini-batches
                print(f"[{epoch + 1}, {i + 1:5d}] loss: {running_loss / 30:.3f}")
                running_loss = 0.0
    print("Finished Training")

    correct, total = 0, 0
    correct_pred = {classname: 0 for classname in classes}
    total_pred = {classname: 0 for classname in classes}
    net.eval()
    # since we're not training, we don't need gradients: a plain forward computes none
    for images, labels in testloader:
        outputs = net(images)
        predicted = ud.to_numpy(F.argmax(outputs, 1))  # the class with the highest energy
        labels = ud.to_numpy(labels)  # the loader gives the backend's tensors
        total += len(labels)
        correct += int((predicted == labels).sum())
        for label, prediction in zip(labels, predicted):
            total_pred[classes[label]] += 1
            correct_pred[classes[label]] += int(label == prediction)
    for classname, count in correct_pred.items():
        print(f"Accuracy for class: {classname:5s} is {100 * count / total_pred[classname]:.1f} %")
    accuracy = correct / total
    print(f"Accuracy of the network on the {total} test images: {100 * accuracy:.1f} %")
    print(f"test accuracy {accuracy:.4f}")
    return accuracy


if __name__ == "__main__":
    main(int(os.environ.get("EPOCHS", 20)), int(os.environ["SAMPLES"]) if "SAMPLES" in os.environ else None)
